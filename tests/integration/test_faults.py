"""Fault tolerance on real processes: workers killed, poison tasks, drains, restarts.

Every delivery is counted where the engine hands results to the caller, so
"exactly once" is checked at the boundary the user sees, not inferred.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import wait_for
from zmqworkers import Cluster
from zmqworkers.errors import WorkerLost
from zmqworkers.security.keys import KEY_ENV

KEY = "f" * 64
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class CountingCluster(Cluster):
    """A Cluster that counts every delivery and every engine event."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.deliveries: Counter[int] = Counter()
        self.events: list[tuple[float, str, Any]] = []
        self._count_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def on_results(self, results: list[tuple[int, bool, Any]]) -> None:
        with self._count_lock:
            for tid, _, _ in results:
                self.deliveries[tid] += 1
        super().on_results(results)

    def on_event(self, name: str, data: Any) -> None:
        self.events.append((time.monotonic(), name, data))
        super().on_event(name, data)

    def event_names(self) -> list[str]:
        return [name for _, name, _ in self.events]


def nap(x: float) -> float:
    time.sleep(x)
    return x


def nap_flag(seconds: float, flag: str) -> float:
    open(flag, "w").close()
    time.sleep(seconds)
    return seconds


def poison(x: int) -> int:
    if x == 13:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.02)
    return x


def whoami(x: int) -> tuple[int, int]:
    time.sleep(0.02)
    return x, os.getpid()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env[KEY_ENV] = KEY
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_daemon(address: str, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "zmqworkers", "--log-level", "INFO", "worker", address, *extra]
    return subprocess.Popen(cmd, env=_env(), stdin=subprocess.DEVNULL)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
            p.wait(10)


def free_port_triple() -> int:
    """A port p with p, p+1 and p+2 free on loopback (tasks, results, control)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base > 65530:
            continue
        socks = []
        try:
            for i in range(3):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no three consecutive free ports on loopback")


def test_sigkill_one_of_two_local_workers_loses_nothing() -> None:
    c = CountingCluster(2)
    try:
        c.wait_for_workers(2)
        victim = c.workers()[0]["pid"]
        t0 = time.monotonic()
        futs = [c.submit(nap, 0.1) for _ in range(40)]
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        assert [f.result(60) for f in futs] == [0.1] * 40
        elapsed = time.monotonic() - t0
        assert len(c.deliveries) == 40 and set(c.deliveries.values()) == {1}
        lost = [d for _, n, d in c.events if n == "worker_lost"]
        assert len(lost) == 1 and "SIGKILL" in lost[0]["how"]
        # Replaced: capacity holds.
        wait_for(lambda: len(c.workers()) == 2, 30)
        assert victim not in {w["pid"] for w in c.workers()}
        assert elapsed < 20
    finally:
        c.shutdown(wait=False, cancel_futures=True)


def test_poison_task_fails_with_worker_lost_after_three_attempts() -> None:
    c = CountingCluster(2, max_attempts=3)
    try:
        futs = {x: c.submit(poison, x) for x in range(20)}
        for x, f in futs.items():
            if x == 13:
                with pytest.raises(WorkerLost) as info:
                    f.result(90)
                err = info.value
                assert len(err.deaths) == 3
                assert all("killed by SIGKILL" in how for _, how in err.deaths)
                assert len({w for w, _ in err.deaths}) == 3  # three different workers
                assert "SIGKILL" in str(err)
            else:
                assert f.result(90) == x
        assert len(c.deliveries) == 20 and set(c.deliveries.values()) == {1}
        # The run goes on normally afterwards, on replaced workers.
        assert list(c.map(poison, [1, 2, 3])) == [1, 2, 3]
    finally:
        c.shutdown(wait=False, cancel_futures=True)


def test_remote_worker_death_is_seen_at_once_not_after_heartbeats(procs, tmp_path) -> None:
    # Heartbeats would need 3 x 5 s: the connection watch must be faster.
    c = CountingCluster(0, key=KEY, heartbeat_interval=5.0, heartbeat_misses=3)
    try:
        victim = start_daemon(c.address)
        procs.append(victim)
        c.wait_for_workers(1)
        flag = tmp_path / "started"
        fut = c.submit(nap_flag, 1.0, str(flag))
        wait_for(flag.exists, 15)
        t_kill = time.monotonic()
        victim.kill()
        wait_for(lambda: "worker_lost" in c.event_names(), 4)
        t_lost = next(t for t, n, _ in c.events if n == "worker_lost")
        assert t_lost - t_kill < 2.0
        how = next(d for _, n, d in c.events if n == "worker_lost")["how"]
        assert "connection closed" in how
        procs.append(start_daemon(c.address))
        assert fut.result(30) == 1.0
        assert set(c.deliveries.values()) == {1}
    finally:
        c.shutdown(wait=False, cancel_futures=True)


def test_sigterm_lets_the_running_task_finish_and_hands_back_the_rest(procs, tmp_path) -> None:
    c = CountingCluster(0, key=KEY, heartbeat_interval=5.0)
    try:
        first = start_daemon(c.address, "--prefetch", "2")
        procs.append(first)
        c.wait_for_workers(1)
        flag = tmp_path / "started"
        futs = [c.submit(nap_flag, 0.8, str(flag)) for i in range(4)]
        wait_for(flag.exists, 15)
        first.send_signal(signal.SIGTERM)
        assert first.wait(10) == 0
        # It said goodbye: no heartbeat timeout (15 s) was needed.
        wait_for(lambda: "worker_left" in c.event_names(), 5)
        assert "worker_lost" not in c.event_names()
        assert futs[0].result(1) == 0.8  # the running call finished
        assert not any(f.done() for f in futs[1:])  # the prefetched went back
        assert c.counters()["queued"] == 3
        procs.append(start_daemon(c.address))
        assert [f.result(30) for f in futs] == [0.8] * 4
        assert set(c.deliveries.values()) == {1} and len(c.deliveries) == 4
    finally:
        c.shutdown(wait=False, cancel_futures=True)


DRAINING_WORKER = textwrap.dedent(
    """
    import sys
    from zmqworkers.worker.loop import Worker, WorkerOptions

    options = WorkerOptions(daemon=True, drain_timeout=0.5)
    worker = Worker(sys.argv[1], sys.argv[2].encode(), options)
    worker.install_signal_handlers()
    sys.exit(worker.run())
    """
)


def test_sigterm_drain_timeout_hands_back_a_call_that_runs_on(procs, tmp_path) -> None:
    c = CountingCluster(0, key=KEY, heartbeat_interval=5.0)
    try:
        # The worker program itself, not under a supervisor: its own drain.
        daemon = subprocess.Popen(
            [sys.executable, "-c", DRAINING_WORKER, c.address, KEY], env=_env()
        )
        procs.append(daemon)
        c.wait_for_workers(1)
        flag = tmp_path / "started"
        fut = c.submit(nap_flag, 60.0, str(flag))
        wait_for(flag.exists, 15)
        t0 = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
        assert time.monotonic() - t0 < 5
        wait_for(lambda: c.counters()["queued"] == 1, 5)
        assert "worker_lost" not in c.event_names()
        assert not fut.done()
    finally:
        c.shutdown(wait=False, cancel_futures=True)


def test_ctrl_c_does_not_stop_a_local_worker_mid_task(tmp_path) -> None:
    c = CountingCluster(1)
    try:
        c.wait_for_workers(1)
        pid = c.workers()[0]["pid"]
        flag = tmp_path / "started"
        fut = c.submit(nap_flag, 0.8, str(flag))
        wait_for(flag.exists, 15)
        os.kill(pid, signal.SIGINT)
        assert fut.result(15) == 0.8
        assert c.submit(whoami, 1).result(15) == (1, pid)  # still the same process
        assert "worker_lost" not in c.event_names()
    finally:
        c.shutdown(wait=False, cancel_futures=True)


CONTROLLER = textwrap.dedent(
    """
    import sys, time
    from zmqworkers import Cluster
    c = Cluster(0, bind=sys.argv[1], key=sys.argv[2], heartbeat_interval=0.3)
    c.wait_for_workers(2, timeout=30)
    assert sorted(c.map(abs, range(-5, 0))) == [1, 2, 3, 4, 5]
    print("served", flush=True)
    time.sleep(120)
    """
)


@pytest.mark.parametrize("gap", [0.0, 2.0], ids=["at-once", "after-heartbeats-missed"])
def test_daemons_serve_a_restarted_controller_on_the_same_address(procs, gap: float) -> None:
    # gap 0: the new controller's heartbeats tell the daemons; gap 2 s: they
    # have noticed the silence (0.9 s) first and wait, saying hello again.
    port = free_port_triple()
    address = f"tcp://127.0.0.1:{port}"
    old = subprocess.Popen(
        [sys.executable, "-c", CONTROLLER, address, KEY],
        env=_env(),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    procs.append(old)
    daemons = [start_daemon(address) for _ in range(2)]
    procs.extend(daemons)
    assert old.stdout is not None
    try:
        assert old.stdout.readline().strip() == b"served"
    finally:
        old.kill()
        old.wait(10)
        old.stdout.close()
    time.sleep(gap)  # the address stays dead this long
    c = CountingCluster(0, bind=address, key=KEY, heartbeat_interval=0.3)
    try:
        c.wait_for_workers(2, timeout=30)
        pids = {pid for _, pid in c.map(whoami, range(40))}
        assert pids <= {d.pid for d in daemons}
        assert all(d.poll() is None for d in daemons)  # never restarted
        assert len(c.deliveries) == 40 and set(c.deliveries.values()) == {1}
    finally:
        c.shutdown(wait=False, cancel_futures=True)


def test_hung_worker_is_lost_by_heartbeat_then_its_late_result_is_dropped_and_it_rejoins(
    procs, tmp_path
) -> None:
    # SIGSTOP: the process and its connections stay, only heartbeats stop,
    # as on a hung host.
    c = CountingCluster(0, key=KEY, heartbeat_interval=0.2, heartbeat_misses=3)
    try:
        hung = start_daemon(c.address)
        procs.append(hung)
        c.wait_for_workers(1)
        flag = tmp_path / "started"
        fut = c.submit(nap_flag, 1.0, str(flag))
        wait_for(flag.exists, 15)
        hung.send_signal(signal.SIGSTOP)
        try:
            lost = wait_for(lambda: [d for _, n, d in c.events if n == "worker_lost"], 5)
            assert isinstance(lost, list) and "no heartbeat" in lost[0]["how"]
            spare = start_daemon(c.address)
            procs.append(spare)
            assert fut.result(30) == 1.0  # run again on the spare
        finally:
            hung.send_signal(signal.SIGCONT)
        # Back: its own result for that task comes late and is not delivered
        # again; it is asked to rejoin, and does.
        wait_for(lambda: c.counters().get("duplicates", 0) >= 1, 10)
        wait_for(lambda: hung.pid in {w["pid"] for w in c.workers()}, 15)
        pids = {pid for _, pid in c.map(whoami, range(60))}
        assert hung.pid in pids
        assert set(c.deliveries.values()) == {1} and len(c.deliveries) == 61
    finally:
        c.shutdown(wait=False, cancel_futures=True)


def test_a_long_call_does_not_make_its_worker_look_dead() -> None:
    # Lost after 0.3 s of silence, yet a 1.5 s call goes through: the
    # worker's heartbeat thread speaks for it while it works.
    c = CountingCluster(1, heartbeat_interval=0.1, heartbeat_misses=3)
    try:
        c.wait_for_workers(1)
        assert c.submit(nap, 1.5).result(30) == 1.5
        assert "worker_lost" not in c.event_names()
    finally:
        c.shutdown(wait=False, cancel_futures=True)


CTRL_C_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from zmqworkers import Cluster

    def nap_flag(seconds, flag):
        with open(flag, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(seconds)
        return os.getpid()

    with Cluster(1) as c:
        fut = c.submit(nap_flag, 1.0, sys.argv[1])
        try:
            while True:
                time.sleep(0.02)
        except KeyboardInterrupt:
            pid = fut.result(15)
            print("interrupted", pid, c.counters().get("workers_lost", 0), flush=True)
    """
)


def test_ctrl_c_in_the_terminal_lets_local_workers_finish_their_call(tmp_path) -> None:
    # A terminal's Ctrl-C goes to the whole foreground process group: the
    # user's program and its local workers alike.
    flag = tmp_path / "started"
    proc = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_SCRIPT, str(flag)],
        env=_env(),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: flag.exists() and flag.read_text(), 30)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        word, pid, lost = out.decode().split()
        # The call finished on the worker that started it; no worker died.
        assert (word, pid, lost) == ("interrupted", flag.read_text(), "0")
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


STOPPABLE_CONTROLLER = textwrap.dedent(
    """
    import sys, time
    from zmqworkers import Cluster
    c = Cluster(0, bind=sys.argv[1], key=sys.argv[2], heartbeat_interval=0.2)
    c.wait_for_workers(1, timeout=30)
    print("joined", flush=True)
    time.sleep(120)
    """
)


def test_a_daemon_notices_a_stopped_controller(
    procs,
) -> None:
    # Silence alone no longer ends a session (a busy controller is silent
    # too); a stopped controller also answers no pings, so the daemon's task
    # connection closes within its heartbeat limit (0.6 s here) and the
    # silence counts.
    address = f"tcp://127.0.0.1:{free_port_triple()}"
    ctl = subprocess.Popen(
        [sys.executable, "-c", STOPPABLE_CONTROLLER, address, KEY],
        env=_env(),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    procs.append(ctl)
    cmd = [sys.executable, "-m", "zmqworkers", "--log-level", "INFO", "worker", address]
    cmd += ["--heartbeat-interval", "0.2"]
    daemon = subprocess.Popen(cmd, env=_env(), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    procs.append(daemon)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert daemon.stderr is not None
        for raw in daemon.stderr:
            lines.append((time.monotonic(), raw.decode(errors="replace")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert ctl.stdout is not None
    assert ctl.stdout.readline().strip() == b"joined"
    t_stop = time.monotonic()
    ctl.send_signal(signal.SIGSTOP)
    try:
        silent = wait_for(lambda: [t for t, text in lines if "controller silent" in text], 10)
        assert isinstance(silent, list) and silent[0] - t_stop < 2.0, silent[0] - t_stop
    finally:
        ctl.send_signal(signal.SIGCONT)
    # Back, it is served again by the same controller.
    wait_for(lambda: sum("joined controller" in text for _, text in lines) >= 2, 15)
    daemon.kill()
    daemon.wait(10)
    reader.join(10)
    assert daemon.stderr is not None
    daemon.stderr.close()
    ctl.stdout.close()
