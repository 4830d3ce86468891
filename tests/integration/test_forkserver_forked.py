"""A fork server forked from a single-threaded controller, or exec'd when that is unsafe.

Each controller is a fresh interpreter (a script the test starts), since
the test process itself may run threads. Real processes throughout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_for
from tests.deploy.helpers import subprocess_env

# What a controller script does before its Cluster starts.
SETUPS = {
    "single thread": "",
    "a thread": "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()",
    "a zmq socket": "ctx = zmq.Context(); sock = ctx.socket(zmq.PUSH)",
}

CONTROLLER = textwrap.dedent(
    """
    import atexit, os, sys, threading, time, types
    import zmq
    from zmqworkers import Cluster
    from zmqworkers.controller import forkserver

    # A module only this process has: a forked server's workers have it too.
    sys.modules["controller_marker"] = types.ModuleType("controller_marker")
    {setup}
    log = sys.argv[1]

    def note_exit():
        with open(log, "a") as f:
            f.write(f"{{os.getpid()}}\\n")

    atexit.register(note_exit)  # the controller's, never its workers'

    def where(_):
        time.sleep(0.05)
        return os.getpid(), "controller_marker" in sys.modules

    c = Cluster(2, start_method="forkserver")
    c.wait_for_workers(2, timeout=30)
    seen = set(c.map(where, range(8)))
    (server,) = forkserver.server_pids()
    print("PIDS", os.getpid(), server, *sorted(pid for pid, _ in seen), flush=True)
    print("IMPORTED", all(imported for _, imported in seen), flush=True)
    if sys.argv[2] == "hang":
        c.submit(time.sleep, 3600)
        time.sleep(3600)
    c.shutdown()
    """
)


def _start(setup: str, log: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CONTROLLER.format(setup=SETUPS[setup]), str(log), mode],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _end(script: subprocess.Popen[str]) -> None:
    if script.poll() is None:
        os.killpg(script.pid, signal.SIGKILL)
    script.wait(10)
    assert script.stdout is not None
    script.stdout.close()


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("setup", list(SETUPS))
def test_the_server_is_forked_only_from_a_single_threaded_controller(
    setup: str, tmp_path: Path
) -> None:
    log = tmp_path / "exits"
    script = _start(setup, log, "finish")
    try:
        assert script.stdout is not None
        line = script.stdout.readline()
        assert line.startswith("PIDS"), line
        controller, server, *workers = (int(p) for p in line.split()[1:])
        imported = script.stdout.readline()
        server_cmdline = psutil.Process(server).cmdline()
        assert psutil.Process(server).ppid() == controller
        assert {psutil.Process(w).ppid() for w in workers} == {server}
        assert script.wait(30) == 0
    finally:
        _end(script)
    forked = setup == "single thread"
    # A forked server is the controller's program; an exec'd one the zygote's.
    assert ("zmqworkers.worker.zygote" in server_cmdline) is not forked
    # Workers of a forked server start with the controller's modules.
    assert imported.split() == ["IMPORTED", str(forked)]
    # The controller's exit handler ran in the controller only: neither the
    # forked server nor its workers ran it when they ended.
    assert log.read_text().split() == [str(controller)]


@pytest.mark.parametrize("setup", ["single thread", "a thread"])
def test_a_forked_or_execd_server_ends_with_its_killed_controller(
    setup: str, tmp_path: Path
) -> None:
    script = _start(setup, tmp_path / "exits", "hang")
    try:
        assert script.stdout is not None
        line = script.stdout.readline()
        assert line.startswith("PIDS"), line
        controller, server, *workers = (int(p) for p in line.split()[1:])
        forked = "zmqworkers.worker.zygote" not in psutil.Process(server).cmdline()
        assert forked is (setup == "single thread")
        os.kill(controller, signal.SIGKILL)
        script.wait(10)
        # Within 2 s: sooner than the workers' own heartbeat watch (3 s).
        wait_for(lambda: not any(_running(p) for p in [server, *workers]), 2)
    finally:
        _end(script)
