"""`zmqworkers worker --processes 2`: replacing, draining, living out a lifetime."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.deploy.helpers import Daemon, subprocess_env
from zmqworkers import Cluster
from zmqworkers.worker.silence import EXIT_NO_CONTROLLER


def slow_square(x: int, marks: str, seconds: float) -> tuple[int, int]:
    Path(marks, f"start-{x}").write_text(str(os.getpid()))
    time.sleep(seconds)
    return x * x, os.getpid()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(0, connection_file=tmp_path / "conn.json")
    try:
        yield c
    finally:
        c.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for d in started:
            d.stop()


def start(daemons: list[Daemon], tmp_path: Path, name: str, *extra: str) -> Daemon:
    d = Daemon(
        ["--connection-file", str(tmp_path / "conn.json"), "--name", name, *extra],
        tmp_path / f"{name}.log",
    )
    daemons.append(d)
    return d


def crash(x: int) -> None:
    os._exit(7)


def probe(status: Path) -> int:
    """`zmqworkers status FILE --ready`, as a container probe runs it."""
    return subprocess.run(
        [sys.executable, "-m", "zmqworkers", "status", str(status), "--ready"],
        env=subprocess_env(),
        capture_output=True,
        timeout=30,
    ).returncode


def event_time(log: str, name: str) -> float:
    """When the daemon logged ``event=name``, in seconds (from its log line's time)."""
    m = re.search(rf"^(\S+ \S+) .*zmqworkers-daemon event={name}\b", log, re.M)
    assert m, f"no event={name} in {log}"
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def pids_of(cluster: Cluster, prefix: str) -> set[int]:
    return {w["pid"] for w in cluster.workers() if w["id"].startswith(prefix)}


def test_killed_child_is_replaced(cluster: Cluster, daemons: list[Daemon], tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    d = start(daemons, tmp_path, "a", "--processes", "2", "--status-file", str(status))
    wait_for(lambda: len(pids_of(cluster, "a-")) == 2, timeout=30)
    before = pids_of(cluster, "a-")
    wait_for(lambda: probe(status) == 0, timeout=10)
    assert set(json.loads(status.read_text())["children"]) == before
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: "event=child_replaced" in d.log(), timeout=15)
    assert re.search(rf"event=child_exit pid={victim} slot=\d code=-9", d.log())
    # A new process takes the dead one's place and serves.
    wait_for(lambda: len(pids_of(cluster, "a-") - before) == 1 and len(cluster.workers()) == 2, 30)
    assert victim not in pids_of(cluster, "a-")
    # Under a name of its own (a-0r1 or a-1r1), so it joins at once.
    assert [w["id"] for w in cluster.workers() if w["id"].endswith("r1")]
    assert list(cluster.map(abs, range(-50, 50))) == [abs(x) for x in range(-50, 50)]
    assert d.proc.poll() is None
    wait_for(lambda: set(json.loads(status.read_text())["children"]) == pids_of(cluster, "a-"), 10)
    assert json.loads(status.read_text())["restarts"] == 1
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0
    # An exited daemon fails its probe.
    assert probe(status) == 1


def test_sigterm_drains_running_tasks_and_hands_back_prefetched(
    cluster: Cluster, daemons: list[Daemon], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    d = start(
        daemons, tmp_path, "b", "--processes", "2", "--prefetch", "1", "--drain-timeout", "15"
    )
    wait_for(lambda: len(cluster.workers()) == 2, timeout=30)
    futures = [cluster.submit(slow_square, x, str(marks), 2.0) for x in range(4)]
    # Both children busy: one task running in each, one prefetched in each.
    wait_for(lambda: len(list(marks.iterdir())) == 2, timeout=20)
    wait_for(lambda: sum(w["in_flight"] for w in cluster.workers()) == 4, timeout=10)
    running = {int(p.name.split("-")[1]) for p in marks.iterdir()}
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0
    drained_in = time.monotonic() - t0
    assert drained_in < 15, drained_in
    log = d.log()
    assert "event=drain reason=SIGTERM" in log and "event=drained" in log, log
    # The running calls finished and their results arrived ...
    for x in running:
        assert futures[x].result(timeout=5)[0] == x * x
    # ... and the prefetched ones went back, unstarted, to the queue.
    waiting = [x for x in range(4) if x not in running]
    assert all(not futures[x].done() for x in waiting)
    assert not any((marks / f"start-{x}").exists() for x in waiting)
    wait_for(lambda: cluster.counters()["queued"] == 2, timeout=10)
    # A new daemon does them: nothing was lost.
    start(daemons, tmp_path, "c", "--processes", "2")
    assert [futures[x].result(timeout=30)[0] for x in range(4)] == [0, 1, 4, 9]


def test_lifetime_drains_before_its_deadline_and_loses_nothing(
    cluster: Cluster, daemons: list[Daemon], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    lifetime, drain = 6.0, 2.0
    t0 = time.monotonic()
    d = start(
        daemons,
        tmp_path,
        "l",
        "--processes",
        "2",
        "--lifetime",
        str(lifetime),
        "--drain-timeout",
        str(drain),
    )
    wait_for(lambda: len(cluster.workers()) == 2, timeout=30)
    n = 120
    futures = [cluster.submit(slow_square, x, str(marks), 0.1) for x in range(n)]
    assert d.proc.wait(lifetime + 10) == 0
    lived = time.monotonic() - t0
    log = d.log()
    assert "event=drain reason=lifetime" in log and "event=drained" in log, log
    assert "child_killed" not in log
    # By the daemon's own clock it left before its lifetime ran out, and
    # not long before the drain was due.
    served = event_time(log, "exit") - event_time(log, "start")
    assert lifetime - drain - 0.2 < served < lifetime, served
    assert lived < lifetime + 10, lived
    done_by_first = sum(f.done() for f in futures)
    assert 0 < done_by_first < n
    start(daemons, tmp_path, "m", "--processes", "2")
    results = [f.result(timeout=60) for f in futures]
    assert [r[0] for r in results] == [x * x for x in range(n)]
    assert cluster.counters()["delivered"] == n


def test_restarts_are_bounded(tmp_path: Path, daemons: list[Daemon]) -> None:
    from zmqworkers import WorkerLost

    with Cluster(
        0, connection_file=tmp_path / "conn.json", max_attempts=1, heartbeat_interval=0.3
    ) as cluster:
        d = start(daemons, tmp_path, "r", "--max-restarts", "2", "--log-level", "INFO")
        wait_for(lambda: len(cluster.workers()) == 1, timeout=30)
        # Each task kills the process that runs it, one after another.
        for x in range(3):
            fut = cluster.submit(crash, x)
            with pytest.raises(WorkerLost):
                fut.result(timeout=30)
        assert d.proc.wait(20) == 1
    log = d.log()
    assert log.count("event=child_exit") == 3 and log.count("code=7") == 3, log
    assert log.count("event=child_replaced") == 2
    assert "event=restart_limit slot=0 restarts=2" in log


def test_death_timeout_ends_a_daemon_without_controller(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    from zmqworkers.security.keys import write_key_file

    key = write_key_file(tmp_path / "key")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = Daemon(
        [
            f"tcp://127.0.0.1:{port}",
            "--key-file",
            str(key),
            "--processes",
            "2",
            "--death-timeout",
            "1",
        ],
        tmp_path / "lonely.log",
    )
    daemons.append(d)
    # Both processes give up on their own; neither counts as a crash, but
    # the daemon's status says it ended without a controller.
    assert d.proc.wait(30) == EXIT_NO_CONTROLLER
    log = d.log()
    assert len(re.findall(r"event=child_exit pid=\d+ slot=\d code=4$", log, re.M)) == 2, log
    assert "event=child_replaced" not in log and "event=exit code=4" in log


def test_supervise_asks_for_the_supervisor_by_name(
    cluster: Cluster, tmp_path: Path, daemons: list[Daemon]
) -> None:
    # One process and no supervisor-only option: only the flag asks for it.
    d = start(daemons, tmp_path, "s", "--supervise")
    wait_for(lambda: len(cluster.workers()) == 1, timeout=30)
    assert cluster.submit(pow, 3, 2).result(timeout=30) == 9
    wait_for(lambda: "zmqworkers-daemon event=" in d.log(), timeout=10)
    # The worker is the supervisor's child, named after its slot.
    assert cluster.workers()[0]["id"] != "s"
