"""The scheduler keeps the last snapshot of each worker that left or was lost, bounded."""

from __future__ import annotations

from zmqworkers.controller.scheduler import MAX_DEPARTED, Scheduler, WorkerState


def test_left_and_lost_workers_keep_their_final_counts() -> None:
    s = Scheduler()
    s.join(WorkerState(id="a", host="h1", pid=1))
    s.join(WorkerState(id="b", host="h2", pid=2))
    for tid in range(4):
        s.add(tid, "spec", None)
    assigned = dict(s.assign())
    done_by_a = assigned["a"]
    for tid in done_by_a:
        assert s.complete("a", tid) is not None
    s.leave("a")
    s.lose("b", "killed by SIGKILL")
    assert list(s.workers) == []
    a, b = s.departed["a"], s.departed["b"]
    assert (a["state"], a["host"], a["in_flight"]) == ("left", "h1", 0)
    assert a["tasks_done"] == len(done_by_a) > 0
    assert b["state"] == "lost: killed by SIGKILL" and b["tasks_done"] == 0
    assert b["current_task"] is None


def test_only_the_latest_departures_are_kept() -> None:
    s = Scheduler()
    for i in range(MAX_DEPARTED + 5):
        s.join(WorkerState(id=f"w{i}"))
        s.leave(f"w{i}")
    assert len(s.departed) == MAX_DEPARTED
    assert next(iter(s.departed)) == "w5" and f"w{MAX_DEPARTED + 4}" in s.departed
