"""Control over every task, on real processes: local workers and a daemon's.

Cancel (queued, prefetched, running with force), per-task timeouts,
priorities and recycling by task count and memory. Each test runs twice:
on a cluster's own local workers, and on a ``zmqworkers worker`` daemon
(a supervisor and its worker processes) that connects to a cluster.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.deploy.helpers import Daemon
from zmqworkers import Cluster, TaskTimeout, WorkerLost

MakeCluster = Callable[..., Cluster]


@pytest.fixture(params=["local", "daemon"])
def make_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeCluster]:
    """``make_cluster(n, prefetch=, daemon_args=[...], **cluster_options)``: a cluster
    served by ``n`` worker processes, local or a daemon's, all joined."""
    owned: list[Any] = []

    def make(n: int, prefetch: int = 1, daemon_args: tuple[str, ...] = (), **opts: Any) -> Cluster:
        if request.param == "local":
            c = Cluster(n, prefetch=prefetch, **opts)
            owned.append(c)
        else:
            conn = tmp_path / "conn.json"
            c = Cluster(0, connection_file=conn, prefetch=prefetch, **opts)
            owned.append(c)
            args = ["--connection-file", str(conn), "--name", "d", "--processes", str(n)]
            args.append("--supervise")  # as deployed: the supervisor replaces processes
            args += ["--prefetch", str(prefetch), *daemon_args]
            owned.append(Daemon(args, tmp_path / "daemon.log"))
        c.wait_for_workers(n, timeout=60)
        return c

    try:
        yield make
    finally:
        for thing in reversed(owned):
            if isinstance(thing, Cluster):
                thing.shutdown(wait=False, cancel_futures=True)
            else:
                thing.stop()


def mark(i: int, folder: str, seconds: float) -> int:
    """Leave a marker as the task starts (it fails if the task ran before), then work."""
    with open(os.path.join(folder, str(i)), "x") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def markers(folder: Path) -> set[int]:
    return {int(p.name) for p in folder.iterdir() if p.name.isdigit()}


def test_cancelled_tasks_never_run(make_cluster: MakeCluster, tmp_path: Path) -> None:
    # Prefetch 8: up to 16 tasks sit on the workers, whose CANCEL must reach them.
    c = make_cluster(2, prefetch=8)
    folder = tmp_path / "marks"
    folder.mkdir()
    futures = [c.submit(mark, i, str(folder), 0.05) for i in range(200)]
    wait_for(lambda: 44 in markers(folder), timeout=60)
    asked = set(range(50, 200))
    before = markers(folder) & asked
    n = c.cancel([futures[i] for i in sorted(asked)])
    # At most the tasks running as cancel was called (one per worker) ran.
    assert n >= len(asked) - 2
    for i in range(50):
        assert futures[i].result(timeout=60) > 0
    # Tasks sent after the cancel, run by both processes: each has gone
    # through everything it held before.
    pids: set[int] = set()
    deadline = time.monotonic() + 60
    while len(pids) < 2 and time.monotonic() < deadline:
        pids |= {f.result(timeout=30) for f in [c.submit(os.getpid) for _ in range(4)]}
    assert len(pids) == 2
    for i in asked:
        if futures[i].cancelled():
            with pytest.raises(CancelledError):
                futures[i].result()
        else:
            assert futures[i].result(timeout=60) > 0
    ran = markers(folder) & asked
    assert len(ran - before) <= 2, sorted(ran)
    assert c.counters()["cancelled"] == n


def test_future_cancel_takes_back_a_queued_and_a_prefetched_task(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    c = make_cluster(1, prefetch=1)
    running = c.submit(mark, 0, str(tmp_path), 1.0)
    prefetched = c.submit(mark, 1, str(tmp_path), 0.0)
    queued = c.submit(mark, 2, str(tmp_path), 0.0)
    wait_for(lambda: 0 in markers(tmp_path), timeout=30)
    wait_for(lambda: c.counters()["queued"] == 1, timeout=10)
    assert not running.cancel()  # as concurrent.futures: a running call is not cancelled
    assert prefetched.cancel() and queued.cancel()
    assert running.result(timeout=30) > 0
    after = c.submit(mark, 3, str(tmp_path), 0.0)
    assert after.result(timeout=30) > 0
    assert markers(tmp_path) == {0, 3}


def test_forced_cancel_replaces_the_process_and_loses_nothing(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    c = make_cluster(1, prefetch=3)
    sleeper = c.submit(mark, 100, str(tmp_path), 60)
    rest = [c.submit(mark, i, str(tmp_path), 0.0) for i in range(10)]
    wait_for(lambda: 100 in markers(tmp_path) and (tmp_path / "100").read_text(), timeout=30)
    old_pid = int((tmp_path / "100").read_text())
    t0 = time.monotonic()
    assert c.cancel([sleeper], force=True) == 1
    with pytest.raises(CancelledError):
        sleeper.result(timeout=2)
    assert time.monotonic() - t0 < 2
    # Each ran once (a second run fails on its marker), on the new process.
    pids = {f.result(timeout=60) for f in rest}
    assert old_pid not in pids
    assert markers(tmp_path) == {100, *range(10)}
    wait_for(lambda: not _alive(old_pid), timeout=10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie not yet reaped by its parent counts as ended
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_shutdown_cancel_futures_takes_back_prefetched_tasks(tmp_path: Path) -> None:
    c = Cluster(1, prefetch=3)
    try:
        c.wait_for_workers(1)
        running = c.submit(mark, 0, str(tmp_path), 0.5)
        rest = [c.submit(mark, i, str(tmp_path), 0.0) for i in range(1, 6)]
        wait_for(lambda: 0 in markers(tmp_path), timeout=30)
        c.shutdown(wait=True, cancel_futures=True)
    finally:
        c.shutdown(wait=False)
    assert running.result() > 0
    assert all(f.cancelled() for f in rest)
    assert markers(tmp_path) == {0}  # the three prefetched never ran either


def test_a_task_past_its_timeout_fails_and_the_others_complete(
    make_cluster: MakeCluster,
) -> None:
    c = make_cluster(2)
    others = [c.submit(pow, i, 2) for i in range(20)]
    t0 = time.monotonic()
    stuck = c.with_options(timeout=1).submit(time.sleep, 30)
    with pytest.raises(TaskTimeout) as info:
        stuck.result(timeout=10)
    assert time.monotonic() - t0 < 3
    err = info.value
    assert err.seconds == 1 and err.worker and f"task {err.task_id}" in str(err)
    assert [f.result(timeout=30) for f in others] == [i * i for i in range(20)]
    # The default of the cluster, and a map under a view, keep working after it.
    assert list(c.with_options(timeout=30).map(abs, range(-3, 0))) == [3, 2, 1]


def test_cluster_task_timeout_is_the_default(tmp_path: Path) -> None:
    with Cluster(1, task_timeout=0.5) as c:
        f = c.submit(time.sleep, 30)
        with pytest.raises(TaskTimeout):
            f.result(timeout=10)
        assert c.submit(pow, 3, 2).result(timeout=30) == 9
        # with_options(timeout=None) keeps the cluster's.
        g = c.with_options(priority=1).submit(time.sleep, 30)
        with pytest.raises(TaskTimeout):
            g.result(timeout=10)


def label(tag: str, folder: str, seconds: float) -> None:
    with open(os.path.join(folder, "order"), "a") as f:
        f.write(tag + "\n")
    time.sleep(seconds)


def test_high_priority_tasks_overtake_queued_ones(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    c = make_cluster(1, prefetch=1)
    low = [c.submit(label, f"low{i}", str(tmp_path), 0.05) for i in range(20)]
    order = tmp_path / "order"
    wait_for(lambda: order.exists(), timeout=30)
    high = [
        c.with_options(priority=5).submit(label, f"high{i}", str(tmp_path), 0.0) for i in range(5)
    ]
    for f in low + high:
        f.result(timeout=60)
    seen = order.read_text().split()
    first = seen.index("high0")
    # Only what was running or prefetched when they came goes before them.
    assert first <= 3, seen
    assert seen[first : first + 5] == [f"high{i}" for i in range(5)], seen
    assert sorted(seen) == sorted([f"low{i}" for i in range(20)] + [f"high{i}" for i in range(5)])


def test_workers_are_recycled_after_max_tasks(make_cluster: MakeCluster, tmp_path: Path) -> None:
    c = make_cluster(2, daemon_args=("--max-tasks", "10"), max_tasks_per_worker=10)
    futures = [c.submit(mark, i, str(tmp_path), 0.0) for i in range(50)]
    pids = [f.result(timeout=120) for f in futures]
    assert len(set(pids)) >= 5
    assert markers(tmp_path) == set(range(50))  # each ran exactly once
    assert max(pids.count(p) for p in set(pids)) <= 10


def hog(mb: int, seconds: float) -> int:
    block = b"\1" * (mb << 20)  # written, so resident
    time.sleep(seconds)
    return len(block)


def test_a_task_over_the_memory_limit_fails_and_the_others_complete(
    make_cluster: MakeCluster,
) -> None:
    c = make_cluster(2, daemon_args=("--max-memory", "300MB"), max_worker_memory="300MB")
    others = [c.submit(pow, i, 2) for i in range(10)]
    big = c.with_options(max_attempts=2).submit(hog, 600, 5)
    with pytest.raises(WorkerLost) as info:
        big.result(timeout=60)
    assert "exceeded the memory limit of 300 MB" in str(info.value)
    assert len(info.value.deaths) == 2
    assert [f.result(timeout=30) for f in others] == [i * i for i in range(10)]
    assert c.submit(pow, 2, 10).result(timeout=30) == 1024
    # Under the limit (and its margin) during a task, over it after: the
    # process leaves to be replaced, and the task does not fail.
    pid = c.submit(leak, 320).result(timeout=60)
    wait_for(lambda: pid not in {w["pid"] for w in c.workers()}, timeout=30)
    assert c.submit(pow, 2, 3).result(timeout=30) == 8


_kept: list[bytes] = []


def leak(mb: int) -> int:
    _kept.append(b"\1" * (mb << 20))
    return os.getpid()
