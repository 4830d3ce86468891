"""What a task forks ends with its worker: each worker leads a process group of its own.

The task below forks a child that ignores SIGTERM and spins for ever,
holding the worker's stdout (the caller's output pipe). It must not outlive
the cluster, a daemon's worker that leaves, nor a worker that ends itself
because its controller or its supervisor died.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_for
from tests.deploy.helpers import subprocess_env
from zmqworkers import Cluster

KEY = "c" * 64


def spawn_spinner(pid_file: str) -> int:
    """Fork a child that ignores SIGTERM and spins; return its pid once it has said it."""
    import os
    import signal
    import time

    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            with open(pid_file + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(pid_file + ".tmp", pid_file)
            while True:
                pass
        finally:
            os._exit(0)
    # Not before: a controller that dies as soon as the result is in (mode
    # "die") would have the child killed before it wrote its pid.
    deadline = time.monotonic() + 30
    while not os.path.exists(pid_file) and time.monotonic() < deadline:
        time.sleep(0.01)
    return pid


# The controller script: one local worker (started as the third argument
# says) runs the task, says the pid of the worker, then leaves the `with`
# block (mode "exit"), dies (mode "die"), or waits for a line on its input
# and then dies (mode "wait").
SCRIPT = inspect.getsource(spawn_spinner) + textwrap.dedent(
    """
    import os, sys
    from zmqworkers import Cluster

    pid_file, mode, start_method = sys.argv[1:4]
    with Cluster(n_workers=1, stop_timeout=5, start_method=start_method) as c:
        c.submit(spawn_spinner, pid_file).result(60)
        print("WORKER", c.workers()[0]["pid"], flush=True)
        if mode == "wait":
            sys.stdin.readline()
        if mode in ("die", "wait"):
            os._exit(0)
    print("DONE", flush=True)
    """
)

START_METHODS = ["spawn", "forkserver"]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _spinner(pid_file: Path) -> int:
    wait_for(pid_file.exists, timeout=30)
    return int(pid_file.read_text())


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Processes a test must not leave behind, whatever it finds."""
    found: list[int] = []
    yield found
    for pid in found:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _script(tmp_path: Path, mode: str, start_method: str = "spawn") -> subprocess.Popen[str]:
    path = tmp_path / "controller.py"
    path.write_text(SCRIPT)
    with open(tmp_path / "stderr.txt", "w") as err:
        return subprocess.Popen(
            [sys.executable, str(path), str(tmp_path / "spinner.pid"), mode, start_method],
            env=subprocess_env(),
            stdin=subprocess.PIPE if mode == "wait" else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )


def _finish(proc: subprocess.Popen[str], pids: list[int]) -> str:
    pids.append(proc.pid)
    try:
        # Ends only when every holder of the pipe has closed it.
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        for pid in pids:  # the spinner first: it holds the pipe
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        pytest.fail("the caller's output pipe stayed open after its program ended")
    return out


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_task_child_ends_with_the_cluster_and_frees_the_output_pipe(
    tmp_path: Path, pids: list[int], start_method: str
) -> None:
    proc = _script(tmp_path, "exit", start_method)
    spinner = _spinner(tmp_path / "spinner.pid")
    pids.append(spinner)
    out = _finish(proc, pids)
    assert "DONE" in out
    wait_for(lambda: not _alive(spinner), timeout=10)


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_task_child_ends_with_a_worker_whose_controller_died(
    tmp_path: Path, pids: list[int], start_method: str
) -> None:
    proc = _script(tmp_path, "die", start_method)
    spinner = _spinner(tmp_path / "spinner.pid")
    pids.append(spinner)
    assert proc.stdout is not None
    worker = int(proc.stdout.readline().split()[1])
    pids.append(worker)
    # The worker notices on its next heartbeat (1 s) and takes the child along.
    wait_for(lambda: not _alive(worker) and not _alive(spinner), timeout=15)
    _finish(proc, pids)


def test_an_orphaned_fork_server_worker_ends_its_tasks_child(
    tmp_path: Path, pids: list[int]
) -> None:
    # The controller is stopped (SIGSTOP) and the fork server killed
    # outright, so neither can kill the worker's group: the worker, orphaned,
    # must end its task's child itself, which only a worker leading a
    # session of its own does (worker/group.py).
    proc = _script(tmp_path, "wait", "forkserver")
    pids.append(proc.pid)
    spinner = _spinner(tmp_path / "spinner.pid")
    pids.append(spinner)
    assert proc.stdout is not None
    worker = int(proc.stdout.readline().split()[1])
    pids.append(worker)
    server = psutil.Process(worker).ppid()
    assert server != proc.pid, "the worker was not forked by a fork server"
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        os.kill(server, signal.SIGKILL)
        # The worker notices on its next heartbeat (1 s) and takes the child along.
        wait_for(lambda: not _alive(worker) and not _alive(spinner), timeout=15)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        os.kill(proc.pid, signal.SIGCONT)
        for pid in (spinner, worker):  # left only by a failure: they hold the pipe
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=30)


def _daemon(address: str) -> subprocess.Popen[bytes]:
    env = subprocess_env()
    env["ZMQWORKERS_KEY"] = KEY
    cmd = [sys.executable, "-m", "zmqworkers", "worker", address, "--supervise"]
    cmd += ["--drain-timeout", "5"]
    return subprocess.Popen(
        cmd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_task_child_ends_with_a_daemon_worker_that_leaves(
    tmp_path: Path, pids: list[int], how: str
) -> None:
    # SIGTERM: the supervisor drains its worker and kills its group.
    # SIGKILL: the supervisor is gone at once; its worker notices and leaves.
    c = Cluster(0, key=KEY)
    try:
        daemon = _daemon(c.address)
        pids.append(daemon.pid)
        c.wait_for_workers(1)
        worker = c.workers()[0]["pid"]
        pids.append(worker)
        pid_file = tmp_path / "spinner.pid"
        c.submit(spawn_spinner, str(pid_file)).result(60)
        spinner = _spinner(pid_file)
        pids.append(spinner)
        daemon.send_signal(getattr(signal, how))
        daemon.wait(15)
        wait_for(lambda: not _alive(worker) and not _alive(spinner), timeout=15)
    finally:
        c.shutdown(wait=False, cancel_futures=True)


def test_a_task_may_start_a_child_that_outlives_the_task(pids: list[int], tmp_path: Path) -> None:
    # The group is killed when the worker leaves, not after each task.
    with Cluster(1) as c:
        pid_file = tmp_path / "spinner.pid"
        c.submit(spawn_spinner, str(pid_file)).result(60)
        spinner = _spinner(pid_file)
        pids.append(spinner)
        assert c.submit(abs, -1).result(30) == 1
        assert _alive(spinner)
        t0 = time.monotonic()
    wait_for(lambda: not _alive(spinner), timeout=10)
    assert time.monotonic() - t0 < 15
