"""Re-dispatch after deaths, step by step: what goes where, and who is blamed."""

from __future__ import annotations

from zmqworkers.controller.scheduler import Scheduler, WorkerState


def make(n_tasks: int, *workers: str, capacity: int = 2) -> Scheduler:
    s = Scheduler(max_attempts=3)
    for tid in range(n_tasks):
        s.add(tid, "spec", tid)
    for wid in workers:
        s.join(WorkerState(id=wid, capacity=capacity))
    return s


def test_a_dead_workers_tasks_go_to_the_front_running_one_blamed() -> None:
    s = make(6, "a")
    assert s.assign() == [("a", [0, 1])]
    assert s.lose("a", "killed by SIGKILL") == []
    assert s.tasks[0].attempts == 1 and s.tasks[1].attempts == 0
    assert s.tasks[0].deaths == [("a", "killed by SIGKILL")]
    assert list(s.pending)[:2] == [0, 1] and s.queued == 6


def test_suspects_run_alone_and_others_fill_other_workers() -> None:
    s = make(6, "a")
    s.assign()
    s.lose("a", "killed")
    s.join(WorkerState(id="b", capacity=2))
    s.join(WorkerState(id="c", capacity=2))
    out = dict(s.assign())
    # 0 and 1 were held by the dead worker: each alone on its own worker.
    assert sorted(out.values()) == [[0], [1]]
    assert s.assign() == []  # b and c stay alone with their suspect
    s.complete("b" if out["b"] == [0] else "c", 0)
    more = s.assign()
    assert more and all(tid not in (0, 1) for _, tids in more for tid in tids)


def test_an_innocent_task_blamed_once_is_never_failed_for_a_poison_behind_it() -> None:
    # "p" kills every worker; the result of "x" (first in line) dies with the
    # worker the first time, so x is blamed once. From then on both run
    # alone and only p is blamed.
    s = Scheduler(max_attempts=3)
    s.add(1, "spec", "x")
    s.add(2, "spec", "p")
    deaths = 0
    delivered: dict[int, str] = {}
    for n in range(10):
        wid = f"w{n}"
        s.join(WorkerState(id=wid, capacity=2))
        (_, tids), *_ = s.assign()
        if 2 in tids and (tids[0] == 2 or deaths == 0):
            deaths += 1
            for tid, err in s.lose(wid, "killed by SIGKILL"):
                delivered[tid] = f"lost after {len(err.deaths)}"
        else:
            s.complete(wid, tids[0])
            delivered[tids[0]] = "ok"
            s.leave(wid)
        if not s.outstanding:
            break
    assert delivered == {1: "ok", 2: "lost after 3"}
    assert deaths <= 3 + 1
