from __future__ import annotations

import random

from zmqworkers.controller.scheduler import Scheduler, WorkerState
from zmqworkers.errors import WorkerLost


def make(n_tasks: int, workers: dict[str, int]) -> Scheduler:
    s = Scheduler()
    for tid in range(n_tasks):
        s.add(tid, "spec", tid)
    for wid, cap in workers.items():
        s.join(WorkerState(id=wid, capacity=cap))
    return s


def test_busy_worker_never_holds_more_than_its_capacity() -> None:
    prefetch = 1
    s = make(100, {"a": 1 + prefetch, "b": 1 + prefetch})
    rng = random.Random(1)
    delivered = set()
    for _ in range(1000):
        for _wid, _tids in s.assign():
            pass
        for w in s.workers.values():
            # the running task plus at most `prefetch` queued behind it
            assert len(w.in_flight) <= 1 + prefetch
        w = s.workers[rng.choice(["a", "b"])]
        if w.in_flight:
            tid = next(iter(w.in_flight))
            assert s.complete(w.id, tid) is not None
            delivered.add(tid)
        if not s.outstanding:
            break
    assert delivered == set(range(100))


def test_each_task_is_delivered_once_even_with_duplicates() -> None:
    s = make(3, {"a": 3})
    ((wid, tids),) = s.assign()
    assert s.complete("a", tids[0]) is not None
    assert s.complete("a", tids[0]) is None


def test_lost_worker_tasks_go_back_to_the_front() -> None:
    s = make(10, {"a": 2, "b": 2})
    s.assign()
    held = list(s.workers["a"].in_flight)
    assert s.lose("a", "killed by SIGKILL") == []
    assert list(s.pending)[:2] == held
    assert s.tasks[held[0]].attempts == 1  # it was running
    assert s.tasks[held[1]].attempts == 0  # it was only prefetched


def test_late_result_from_lost_worker_is_used_once() -> None:
    s = make(1, {"a": 1, "b": 1})
    s.assign()
    owner = next(w for w in s.workers.values() if w.in_flight).id
    other = "b" if owner == "a" else "a"
    s.lose(owner, "cut")
    s.assign()
    assert 0 in s.workers[other].in_flight
    assert s.complete(owner, 0) is not None  # late, but first: delivered
    assert s.complete(other, 0) is None  # the re-run's result is the duplicate
    assert not s.workers[other].in_flight


def test_poison_task_fails_after_max_attempts() -> None:
    s = Scheduler(max_attempts=3)
    s.add(0, "spec", None)
    failed = []
    for i in range(3):
        s.join(WorkerState(id=f"w{i}", capacity=1))
        s.assign()
        failed = s.lose(f"w{i}", f"exit {i}")
    assert len(failed) == 1
    tid, err = failed[0]
    assert tid == 0 and isinstance(err, WorkerLost)
    assert [w for w, _ in err.deaths] == ["w0", "w1", "w2"]
    assert s.outstanding == 0 and s.queued == 0


def test_hand_back_requeues_without_blame() -> None:
    s = make(4, {"a": 4})
    s.assign()
    assert s.hand_back("a", [1, 2, 3]) == 3
    assert s.queued == 3
    assert all(s.tasks[t].attempts == 0 for t in (1, 2, 3))


def test_cancelled_queued_task_is_skipped() -> None:
    s = make(3, {})
    assert s.cancel(1)
    s.join(WorkerState(id="a", capacity=5))
    ((_, tids),) = s.assign()
    assert tids == [0, 2]


def test_reconcile_takes_back_only_what_the_worker_had_and_lost() -> None:
    s = make(4, {"a": 4})
    [(_, tids)] = s.assign()
    w = s.workers["a"]
    # Tasks 0 and 1 went out in message 10, 2 in message 11; 3 not sent yet.
    w.in_flight.update({0: 10, 1: 10, 2: 11})
    # The worker received up to message 10 and holds task 1: task 0's
    # result was lost; task 2 is still on its way, task 3 never left.
    back, failed = s.reconcile("a", 10, [1])
    assert back == [0] and failed == []
    assert list(w.in_flight) == [1, 2, 3]
    assert s.tasks[0].worker is None and s.tasks[0].attempts == 1
    assert s.queued == 1
    # The same status again changes nothing: nothing is taken back twice.
    assert s.reconcile("a", 10, [1]) == ([], [])
    # A late result for the task taken back is still delivered once.
    assert s.complete("a", 0) is not None and s.complete("a", 0) is None


def test_reconcile_fails_a_task_whose_result_keeps_getting_lost() -> None:
    s = make(1, {"a": 1})
    for attempt in range(1, 4):
        [(_, [tid])] = s.assign()
        s.workers["a"].in_flight[tid] = attempt
        back, failed = s.reconcile("a", attempt, [])
        if attempt < 3:
            assert back == [0] and not failed
    assert back == [] and [t for t, _ in failed] == [0]
    err = failed[0][1]
    assert isinstance(err, WorkerLost) and "its result never arrived" in str(err)
    assert s.outstanding == 0 and s.queued == 0
    assert s.reconcile("nobody", 5, []) == ([], [])


def test_batch_calls_keep_the_counts_of_single_ones() -> None:
    s = Scheduler()
    s.add_many("f", [(0, "a"), (1, "b"), (2, "c")])
    s.add_many("g", [(3, "d")])
    s.add_many("f", [])
    assert (s.queued, s.spec_refs) == (4, {"f": 3, "g": 1})
    s.join(WorkerState(id="a", capacity=4))
    assert s.assign() == [("a", [0, 1, 2, 3])]
    s.lose("a", "killed")  # all four back in the queue, none sent again yet
    s.join(WorkerState(id="b", capacity=1))
    assert s.assign() == [("b", [0])]
    # Late results from the lost worker, one of them twice, one for a task
    # now on another worker: each delivered once, the counts follow.
    recs = s.complete_many("a", [3, 0, 3, 1])
    assert [r is not None for r in recs] == [True, True, False, True]
    assert [r.arg for r in recs if r is not None] == ["d", "a", "b"]
    assert (s.queued, s.spec_refs, s.outstanding) == (1, {"f": 1}, 1)
    assert s.workers["b"].in_flight == {0: None}  # its copy's result is the duplicate
    last = s.complete_many("b", [0, 2])  # 2 was queued: delivered all the same
    assert last[0] is None and last[1] is not None and last[1].arg == "c"
    assert (s.queued, s.spec_refs, s.outstanding) == (0, {}, 0)
    assert s.workers["b"].in_flight == {} and s.workers["b"].done == 1
