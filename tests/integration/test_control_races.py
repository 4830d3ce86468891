"""Control where the controller's view of a worker lags behind: results held for a batch,
a cancel whose caller stopped waiting. On real processes, local and a daemon's.

A worker sends back the results of one TASKS message together, so while the
last of them runs, the first may be done with its result still held: the
controller must not take that one for the task running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.integration.test_control import (
    MakeCluster,
    _alive,
    make_cluster,
    mark,
    markers,
)
from zmqworkers import Cluster, TaskTimeout, WorkerLost
from zmqworkers.client import views

__all__ = ["make_cluster"]  # the fixture, shared with test_control


def one_message(c: Cluster, submit: Iterator[object]) -> list:  # type: ignore[type-arg]
    """Submit while dispatch is paused, so the tasks go out together in one TASKS message."""
    c._engine.pause()
    try:
        futures = list(submit)
        # Every submit is in the queue before dispatch resumes.
        wait_for(lambda: c.counters()["queued"] == len(futures), timeout=10)
    finally:
        c._engine.resume()
    return futures


def test_a_fast_task_is_not_timed_by_the_slow_one_behind_it(make_cluster: MakeCluster) -> None:
    c = make_cluster(1, prefetch=1)
    view = c.with_options(timeout=1)
    fast, slow = one_message(c, (view.submit(time.sleep, s) for s in (0, 30)))
    # The fast one's result is not held while the slow one runs: before the
    # fix, the slow one's time counted against it and it timed out.
    assert fast.result(timeout=10) is None
    t0 = time.monotonic()
    with pytest.raises(TaskTimeout):
        slow.result(timeout=10)
    assert time.monotonic() - t0 < 3
    assert c.submit(pow, 2, 5).result(timeout=30) == 32


def test_forced_cancel_of_a_task_started_behind_held_results(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    c = make_cluster(1, prefetch=1)
    folder = str(tmp_path)
    fast, slow = one_message(c, (c.submit(mark, i, folder, s) for i, s in ((0, 0.0), (1, 60))))
    wait_for(lambda: 1 in markers(tmp_path) and (tmp_path / "1").read_text(), timeout=30)
    old_pid = int((tmp_path / "1").read_text())
    t0 = time.monotonic()
    assert c.cancel([slow], force=True) == 1
    with pytest.raises(CancelledError):
        slow.result(timeout=2)
    # Its process ends (before the fix only CANCEL went out, read after the call).
    wait_for(lambda: not _alive(old_pid), timeout=10)
    assert time.monotonic() - t0 < 5
    # The fast one's result, held back, was handed over: it ran once.
    assert fast.result(timeout=30) == old_pid
    after = c.submit(mark, 2, folder, 0.0)
    assert after.result(timeout=60) != old_pid
    assert markers(tmp_path) == {0, 1, 2}


def test_the_memory_guard_blames_the_task_it_stopped(tmp_path: Path) -> None:
    with Cluster(1, prefetch=1, max_worker_memory="300MB") as c:
        c.wait_for_workers(1, timeout=60)
        view = c.with_options(max_attempts=1)
        small, big = one_message(c, (view.submit(_allocate, n) for n in (1, 600)))
        # Before the fix, the small one was blamed (it was the first held)
        # and failed, and the big one went back to run again.
        assert small.result(timeout=60) == 1
        with pytest.raises(WorkerLost, match="memory limit"):
            big.result(timeout=60)


def _allocate(mb: int) -> int:
    """A small call is quick (its result is held for the batch), a large one stays."""
    block = bytearray(mb * 1_000_000)
    for i in range(0, len(block), 4096):
        block[i] = 1
    if mb > 100:
        time.sleep(5)
    return mb


def test_a_cancel_that_stops_waiting_still_ends_its_futures(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(views, "CANCEL_WAIT", 0.2, raising=False)
    with Cluster(1, prefetch=0) as c:
        c.wait_for_workers(1, timeout=60)
        running = c.submit(time.sleep, 1.5)
        queued = [c.submit(pow, i, 2) for i in range(3)]
        # The engine thread is held up (a slow command): the cancel's caller
        # stops waiting, and the command runs later.
        started = threading.Event()
        blocker = threading.Thread(
            target=c._engine.call, args=(lambda: started.set() or time.sleep(1.0), 5.0)
        )
        blocker.start()
        try:
            assert started.wait(5)
            assert c.cancel(queued) == 0  # no answer within CANCEL_WAIT
        finally:
            blocker.join(10)
        for f in queued:  # before the fix: pending for ever
            with pytest.raises(CancelledError):
                f.result(timeout=10)
        assert running.result(timeout=30) is None


def _write_segments_then_sleep(seconds: float) -> int:
    """In the worker: a thread keeps creating segments under the session's prefix,
    as the result writer does, while the call sleeps."""
    import os
    import threading as th

    from zmqworkers.worker import current

    worker = current.serving
    assert worker is not None and worker._skey.segments is not None
    prefix = worker._skey.segments.prefix

    def write() -> None:
        for i in range(10**9):
            with open(f"/dev/shm/{prefix}late{i % 4}", "wb") as f:
                f.write(b"x")

    th.Thread(target=write, daemon=True).start()
    time.sleep(seconds)
    return os.getpid()


def test_a_forced_interrupt_leaves_no_segment_of_its_session() -> None:
    import os

    before = set(os.listdir("/dev/shm"))
    with Cluster(1, prefetch=0) as c:
        c.wait_for_workers(1, timeout=60)
        f = c.submit(_write_segments_then_sleep, 60)
        wait_for(lambda: any("late" in n for n in set(os.listdir("/dev/shm")) - before), 30)
        pid = c.workers()[0]["pid"]
        assert c.cancel([f], force=True) == 1
        wait_for(lambda: not _alive(pid), timeout=10)
        # Reaped (a new worker joins), and still open: nothing of it is left.
        wait_for(lambda: c.workers() and c.workers()[0]["pid"] != pid, timeout=30)
        left = [n for n in set(os.listdir("/dev/shm")) - before if "late" in n]
        assert left == []


def _fail() -> None:
    raise ValueError("on purpose")


def test_counters_and_the_dashboard_count_the_same_things(tmp_path: Path) -> None:
    with Cluster(1, prefetch=2) as c:
        c.wait_for_workers(1, timeout=60)
        with pytest.raises(ValueError):
            c.submit(_fail).result(timeout=30)
        with pytest.raises(TaskTimeout):  # failed, interrupted, timed out
            c.with_options(timeout=0.5).submit(time.sleep, 30).result(timeout=30)
        folder = str(tmp_path)
        running = c.submit(mark, 0, folder, 60)
        behind = [c.submit(mark, i, folder, 0.0) for i in (1, 2)]
        wait_for(lambda: 0 in markers(tmp_path), timeout=30)
        wait_for(lambda: c.counters()["queued"] == 0, timeout=10)  # both prefetched
        assert c.cancel([running], force=True) == 1  # cancelled and interrupted
        assert [f.result(timeout=60) > 0 for f in behind] == [True, True]
        counts, status = c.counters(), c.status()
    # Before, counters()["failed"] left out the timeout (1 against 2), and the
    # two tasks prefetched behind each interrupted call counted as retried.
    assert counts["failed"] == status["failed"] == 2
    assert counts["redispatched"] == status["retried"] == 0
    assert counts["cancelled"] == 1
    assert counts["interrupted"] == 2 and counts["timed_out"] == 1


def test_a_daemon_that_missed_the_interrupt_still_ends_the_call(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.deploy.helpers import Daemon

    # The daemon's worker processes take the first INTERRUPT for them as
    # missed, as a subscriber whose link was being re-made would.
    monkeypatch.setenv("ZMQWORKERS_TEST_MISS_INTERRUPTS", "1")
    conn = tmp_path / "conn.json"
    folder = tmp_path / "marks"
    folder.mkdir()
    with Cluster(0, connection_file=conn, prefetch=2) as c:
        args = ["--connection-file", str(conn), "--name", "d", "--processes", "1"]
        daemon = Daemon([*args, "--supervise", "--prefetch", "2"], tmp_path / "daemon.log")
        try:
            c.wait_for_workers(1, timeout=60)
            sleeper = c.submit(mark, 0, str(folder), 60)
            behind = [c.submit(mark, i, str(folder), 0.0) for i in (1, 2)]
            wait_for(lambda: 0 in markers(folder) and (folder / "0").read_text(), timeout=30)
            old_pid = int((folder / "0").read_text())
            assert c.cancel([sleeper], force=True) == 1
            # Before, the one broadcast was all: the call ran its 60 s.
            wait_for(lambda: not _alive(old_pid), timeout=10)
            # The tasks it held ran once (a second run fails on its marker).
            assert all(f.result(timeout=60) != old_pid for f in behind)
            assert markers(folder) == {0, 1, 2}
        finally:
            daemon.stop()


def _step(kind: str, folder: str) -> str:
    """In the worker, by ``kind``: stretch its read interval, wait for a message
    to arrive at its task socket, run long, or put the interval back."""
    import select

    import zmq

    from zmqworkers.worker import current, loop

    folder_path = Path(folder)
    if kind != "warm":
        (folder_path / kind).touch()
    if kind == "stretch":
        # The read interval (a millisecond) made an hour: a message that
        # arrives between reads arrives, as a CANCEL in a tiny task's last
        # moments does, while the loop is not due to read. Sleeping past
        # the millisecond makes it read once more, now, and count from there.
        loop.INGEST_SECONDS = 3600.0
        time.sleep(0.01)
    elif kind == "wait":
        t0 = time.perf_counter()
        deadline = time.monotonic() + 30
        worker = current.serving
        assert worker is not None
        (tasks,) = [s for s in worker._ctx._sockets if s.type == zmq.DEALER and not s.closed]
        # Until a message (the CANCEL: every task is queued already) has
        # reached this socket: its notification descriptor turns readable.
        while not select.select([tasks.get(zmq.FD)], [], [], 0.01)[0]:
            assert time.monotonic() < deadline, "no message reached the task socket"
        # A call this long is past the loop's (much shorter) look for news.
        time.sleep(max(0.0, 0.001 - (time.perf_counter() - t0)))
    elif kind == "long":
        deadline = time.monotonic() + 30
        while not (folder_path / "end").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    elif kind == "restore":
        loop.INGEST_SECONDS = 0.001
    return kind


def test_a_cancel_that_arrived_is_read_before_the_next_task_starts(tmp_path: Path) -> None:
    with Cluster(1, prefetch=1) as c:
        c.wait_for_workers(1, timeout=60)
        folder = str(tmp_path)
        # Measured as tiny, the function's tasks go out many to a message:
        # the four below reach the worker together.
        assert [c.submit(_step, "warm", folder).result(timeout=30) for _ in range(3)]
        kinds = ("stretch", "wait", "long", "restore")
        futures = one_message(c, (c.submit(_step, k, folder) for k in kinds))
        try:
            wait_for(lambda: (tmp_path / "wait").exists(), timeout=30)
            # "long" is prefetched: a CANCEL goes to the worker, whose "wait"
            # returns once the CANCEL is on its socket.
            assert c.cancel([futures[2]]) == 1
            wait_for(lambda: futures[3].done() or (tmp_path / "long").exists(), timeout=60)
            # Before, the loop did not read its sockets until its interval
            # was up, and "long" started (the old loop read before each task).
            assert not (tmp_path / "long").exists()
            assert [f.result(timeout=10) for f in (futures[0], futures[1], futures[3])] == [
                "stretch",
                "wait",
                "restore",
            ]
            with pytest.raises(CancelledError):
                futures[2].result(timeout=10)
        finally:
            (tmp_path / "end").touch()
