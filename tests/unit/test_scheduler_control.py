"""Priorities, cancels and interrupts in the pure scheduler."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from zmqworkers.controller.scheduler import Scheduler, TaskOptions, WorkerState


def drain(s: Scheduler, wid: str) -> list[int]:
    """Run the one worker until nothing is outstanding; the order tasks ran in."""
    order = []
    while s.outstanding:
        s.assign()
        tid = next(iter(s.workers[wid].in_flight))
        order.append(tid)
        s.complete(wid, tid)
    return order


def test_higher_priority_goes_first_and_in_order_within_a_level() -> None:
    s = Scheduler()
    s.join(WorkerState(id="a", capacity=1))
    for tid in range(5):
        s.add(tid, "f", tid)  # priority 0
    s.add(10, "f", None, TaskOptions(priority=2))
    s.add(11, "f", None, TaskOptions(priority=1))
    s.add(12, "f", None, TaskOptions(priority=2))
    s.add(13, "f", None, TaskOptions(priority=-1))
    assert drain(s, "a") == [10, 12, 11, 0, 1, 2, 3, 4, 13]


def test_a_lost_task_goes_back_to_the_front_of_its_own_level() -> None:
    s = Scheduler()
    s.join(WorkerState(id="a", capacity=1))
    s.add(1, "f", None, TaskOptions(priority=5))
    s.add(2, "f", None)
    s.assign()
    s.add(3, "f", None, TaskOptions(priority=5))
    s.lose("a", "killed")
    assert list(s.pending) == [1, 3, 2]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=40))
def test_priority_order_is_a_stable_sort(priorities: list[int]) -> None:
    s = Scheduler()
    s.join(WorkerState(id="a", capacity=1))
    for tid, p in enumerate(priorities):
        s.add(tid, "f", None, TaskOptions(priority=p))
    want = sorted(range(len(priorities)), key=lambda t: -priorities[t])
    assert drain(s, "a") == want


def test_cancel_says_where_the_task_was() -> None:
    s = Scheduler()
    s.join(WorkerState(id="a", capacity=3))
    for tid in range(5):
        s.add(tid, "f", tid)
    s.assign()  # 0 runs, 1 and 2 prefetched, 3 and 4 queued
    assert s.cancel(3) == ("queued", None)
    assert s.cancel(1) == ("prefetched", "a")
    assert s.cancel(0) == ("running", "a")
    assert s.cancel(99) == ("unknown", None)
    assert list(s.workers["a"].in_flight) == [0, 2]
    assert s.queued == 1 and s.outstanding == 3
    # A late result of a task taken back from the worker is not delivered.
    assert s.complete("a", 1) is None
    assert drain(s, "a") == [0, 2, 4]


def test_interrupt_forgets_the_running_task_and_requeues_the_rest_without_blame() -> None:
    s = Scheduler(max_attempts=1)
    s.join(WorkerState(id="a", capacity=3))
    for tid in range(3):
        s.add(tid, "f", tid)
    s.assign()
    assert s.interrupt("a") == 0
    assert "a" not in s.workers and s.departed["a"]["state"] == "interrupted"
    assert list(s.pending) == [1, 2]
    assert all(s.tasks[t].attempts == 0 and not s.tasks[t].suspect for t in (1, 2))
    assert s.redispatched == 0  # never started: not retried


def test_per_task_max_attempts() -> None:
    s = Scheduler(max_attempts=3)
    s.join(WorkerState(id="a", capacity=1))
    s.add(1, "f", None, TaskOptions(max_attempts=1))
    s.assign()
    ((tid, err),) = s.lose("a", "killed by SIGKILL")
    assert tid == 1 and "killed by SIGKILL" in str(err)
