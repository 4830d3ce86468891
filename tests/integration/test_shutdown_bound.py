"""Shutdown is bounded: a task that never returns, Ctrl-C, a task raising KeyboardInterrupt.

The controller runs in a script of its own, in a session of its own, so a
hang shows as a script that does not end (and is killed by the test), and
Ctrl-C can be sent to its whole process group as a terminal would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.deploy.helpers import subprocess_env
from zmqworkers import Cluster
from zmqworkers.errors import RemoteError

# The script starts a cluster with one local worker, runs a call that never
# returns, says "RUNNING <worker pid>", then does what MODE says.
SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from zmqworkers import Cluster
    from zmqworkers.errors import ClusterShutdown

    mode, stop_timeout = sys.argv[1], float(sys.argv[2])
    with Cluster(n_workers=1, stop_timeout=stop_timeout) as c:
        fut = c.submit(time.sleep, 3600)
        deadline = time.monotonic() + 30
        while c.counters()["running"] != 1:
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.02)
        print("RUNNING", c.workers()[0]["pid"], flush=True)
        if mode == "die":
            os._exit(0)
        if mode == "shutdown":
            t0 = time.monotonic()
            c.shutdown(wait=True, cancel_futures=True)
            took = time.monotonic() - t0
            exc = fut.exception(0)
            assert isinstance(exc, ClusterShutdown), repr(exc)
            print("SHUTDOWN", round(took, 2), str(exc), flush=True)
        if mode == "body":
            time.sleep(60)  # Ctrl-C lands here, inside the block
        # mode "interrupt": the block's exit waits for the task
    print("BLOCK EXITED", flush=True)
    """
)


class Script:
    """The controller script, a process group of its own that the test ends."""

    def __init__(self, tmp_path: Path, mode: str, stop_timeout: float) -> None:
        path = tmp_path / "controller.py"
        path.write_text(SCRIPT)
        self.proc = subprocess.Popen(
            [sys.executable, str(path), mode, str(stop_timeout)],
            env=subprocess_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded by the script's own 30 s
        assert line.startswith("RUNNING"), line + self.rest()
        self.worker_pid = int(line.split()[1])

    def wait(self, timeout: float) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"the script did not end within {timeout} s:\n{out}\n{err}")
        return self.proc.returncode, out, err

    def rest(self) -> str:
        self.kill()
        out, err = self.proc.communicate()
        return out + err

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        # An orphaned worker has left the group's parent, not the group; it
        # is killed by its pid, checked to be still the worker's.
        pid = getattr(self, "worker_pid", 0)
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def script(tmp_path: Path) -> Iterator[list[Script]]:
    made: list[Script] = []
    yield made
    for s in made:
        s.kill()
        if s.proc.poll() is None:
            s.proc.wait(10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def test_shutdown_of_a_task_that_never_returns_is_bounded(
    tmp_path: Path, script: list[Script]
) -> None:
    s = Script(tmp_path, "shutdown", 1.0)
    script.append(s)
    rc, out, err = s.wait(30)
    assert rc == 0, out + err
    line = next(x for x in out.splitlines() if x.startswith("SHUTDOWN"))
    took = float(line.split()[1])
    # stop_timeout, then SIGTERM and 3 s later SIGKILL for the stuck worker.
    assert took < 1.0 + 3 + 3, line
    assert "stop_timeout=1 s" in line
    assert "BLOCK EXITED" in out
    wait_for(lambda: not _alive(s.worker_pid), timeout=5)


def test_local_worker_ends_itself_when_its_controller_dies_mid_call(
    tmp_path: Path, script: list[Script]
) -> None:
    s = Script(tmp_path, "die", 10.0)
    script.append(s)
    s.wait(30)
    # Heartbeats go out every second, and the parent check rides on them.
    wait_for(lambda: not _alive(s.worker_pid), timeout=10)


@pytest.mark.parametrize("mode", ["interrupt", "body"])
def test_ctrl_c_during_a_hung_shutdown_stops_the_program(
    tmp_path: Path, script: list[Script], mode: str
) -> None:
    # "interrupt": Ctrl-C while the block's exit waits for the hung task;
    # "body": Ctrl-C inside the block, whose exit must then not wait at all.
    s = Script(tmp_path, mode, 60.0)
    script.append(s)
    # Ctrl-C: SIGINT to the whole foreground group, local worker included
    # (which ignores it).
    t0 = time.monotonic()
    os.killpg(s.proc.pid, signal.SIGINT)
    rc, out, err = s.wait(20)
    took = time.monotonic() - t0
    assert rc != 0, out + err
    assert "KeyboardInterrupt" in err
    assert "BLOCK EXITED" not in out
    assert took < 10, took
    wait_for(lambda: not _alive(s.worker_pid), timeout=5)


def _interrupted() -> None:
    raise KeyboardInterrupt("raised by the task itself")


def test_task_raising_keyboard_interrupt_fails_only_that_task() -> None:
    with Cluster(n_workers=1) as c:
        pid = c.submit(os.getpid).result(30)
        exc = c.submit(_interrupted).exception(30)
        assert isinstance(exc, RemoteError), repr(exc)
        # A RemoteError stays an Exception: `except Exception` still catches it.
        assert isinstance(exc, Exception)
        assert exc.type_name == "KeyboardInterrupt"
        assert "raised by the task itself" in exc.remote_message
        # The same worker goes on serving.
        assert c.submit(os.getpid).result(30) == pid
        assert c.counters().get("workers_lost", 0) == 0
