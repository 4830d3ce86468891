"""An idle worker sleeps: its threads wake on their timers and messages only,
and a guard asleep without a timeout still ends with its session at once.
"""

from __future__ import annotations

import collections
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import zmq

from tests.conftest import wait_for
from tests.integration.test_control import _alive
from zmqworkers import Cluster
from zmqworkers.controller import control
from zmqworkers.protocol.records import Welcome
from zmqworkers.worker.guard import TaskMarks, start_guard
from zmqworkers.worker.options import WorkerOptions


def wake_ups(pid: int) -> int:
    """How many times the threads of ``pid`` have been scheduled in so far."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        total += int((task / "schedstat").read_text().split()[2])
    return total


def test_a_sleeping_guard_ends_with_its_session() -> None:
    # With no memory limit and nothing cancelled, the guard waits on its
    # socket with no timeout; here nothing is ever published to it, so only
    # the session's end can wake it.
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    key = b"k" * 32
    worker = SimpleNamespace(
        id="w",
        address=f"tcp://127.0.0.1:{port}",
        options=WorkerOptions(),
        _pub_key=key,
        _current=None,
        _state="idle",
        _limit=1 << 20,
        marks=TaskMarks(),
        _queue=collections.deque(),
        _results_ep=None,
        _result_sender="w@t/r",
        _skey=key,
        _curve=None,
    )
    welcome = Welcome(
        controller="c",
        nonce=b"",
        session=b"",
        pub_nonce=b"",
        pub_seq=0,
        results=port,
        control=port,
        heartbeat_interval=1.0,
        heartbeat_misses=3,
        sign_buffers=True,
    )
    stop = threading.Event()
    guard = start_guard(worker, ctx.socket(zmq.SUB), welcome, stop)  # type: ignore[arg-type]
    try:
        time.sleep(0.3)
        assert guard.is_alive()
        stop.set()
        t0 = time.monotonic()
        guard.join(timeout=10)
        assert not guard.is_alive()
        assert time.monotonic() - t0 < 2
    finally:
        stop.set()
        guard.join(timeout=10)
        pub.close()
        ctx.destroy(linger=0)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not Path("/proc/self/task").exists(),
    reason="counts wake-ups from Linux's /proc/PID/task/*/schedstat",
)
def test_an_idle_worker_wakes_only_on_its_timers() -> None:
    # Its main loop waits 250 ms a turn, the heartbeat thread beats once a
    # second, the guard sleeps until a broadcast (one heartbeat a second),
    # ZeroMQ's I/O thread carries those and its pings: about 20 a second.
    # Polling every 50 ms in the guard and 100 ms in the main loop made 40.
    with Cluster(1) as c:
        c.wait_for_workers(1, timeout=30)
        assert c.submit(pow, 2, 5).result(timeout=30) == 32
        pid = c.workers()[0]["pid"]
        time.sleep(0.5)
        before, t0 = wake_ups(pid), time.monotonic()
        time.sleep(3)
        rate = (wake_ups(pid) - before) / (time.monotonic() - t0)
        assert rate < 30, f"an idle worker woke {rate:.0f} times a second"


def _guard_thread_once(go: str) -> int:
    """In the worker: wait for ``go`` to exist, then name the guard thread's id."""
    deadline = time.monotonic() + 30
    while not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    (guard,) = [t for t in threading.enumerate() if t.name == "zmqworkers-guard"]
    assert guard.native_id is not None
    return guard.native_id


def thread_wake_ups(pid: int, tid: int) -> int:
    return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[2])


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not Path("/proc/self/task").exists(),
    reason="counts wake-ups from Linux's /proc/PID/task/*/schedstat",
)
def test_the_guard_sleeps_again_after_a_forced_cancel(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The order is repeated for REPEAT_FOR seconds: shortened, so that the
    # wake-ups counted are the guard's own, not the repeats'.
    monkeypatch.setattr(control, "REPEAT_FOR", 0.5)
    go = tmp_path / "go"
    with Cluster(1, prefetch=2) as c:
        c.wait_for_workers(1, timeout=30)
        pid = c.workers()[0]["pid"]
        running = c.submit(_guard_thread_once, str(go))
        behind = c.submit(pow, 2, 5)
        wait_for(lambda: c.counters()["queued"] == 0, timeout=10)  # both on the worker
        # Prefetched as the controller sees it: dropped unrun by the worker,
        # whose guard is told in case it had started.
        assert c.cancel([behind], force=True) == 1
        go.touch()
        tid = running.result(timeout=30)
        assert c.workers()[0]["pid"] == pid  # not replaced: the task never ran
        time.sleep(1.0)  # the order's repeats are over
        before, t0 = thread_wake_ups(pid, tid), time.monotonic()
        time.sleep(2)
        rate = (thread_wake_ups(pid, tid) - before) / (time.monotonic() - t0)
        # Asleep on its socket: the controller's heartbeat, once a second.
        # Before, it looked every 50 ms for the rest of the session: 20.
        assert rate < 6, f"the guard woke {rate:.0f} times a second"


def _stretch_the_idle_wait() -> int:
    """In the worker: wait ten minutes a turn when idle, instead of 250 ms."""
    from zmqworkers.worker import loop

    loop.IDLE_POLL_MS = 600_000
    return os.getpid()


def test_a_signal_ends_the_idle_wait() -> None:
    # Heartbeats (which end the wait too) a minute apart.
    with Cluster(1, heartbeat_interval=60) as c:
        c.wait_for_workers(1, timeout=30)
        pid = c.submit(_stretch_the_idle_wait).result(timeout=30)
        # Idle, its loop waits on its sockets for ten minutes; before, only
        # that timeout or a message let it see the flag the handler set.
        wait_for(lambda: c.workers()[0]["state"] == "idle", timeout=10)
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not _alive(pid), timeout=20)
