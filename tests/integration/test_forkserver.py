"""Local workers forked from a fork server behave as spawned ones, and start warm.

Real processes throughout: the fork server, its workers, and a controller
script that the test kills with SIGKILL.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

import zmqworkers
from tests.conftest import wait_for
from tests.deploy.helpers import subprocess_env
from tests.integration.test_faults import CountingCluster, nap, poison
from zmqworkers import Cluster
from zmqworkers.controller import forkserver
from zmqworkers.controller.launcher import Exit, LocalWorkers
from zmqworkers.errors import ConfigurationError, WorkerLost
from zmqworkers.security.keys import KEY_ENV, new_key

BOTH = pytest.mark.parametrize("start_method", ["forkserver", "spawn"])


def worker_view(_: Any) -> dict[str, Any]:
    import multiprocessing as mp

    time.sleep(0.05)  # long enough for the other worker to take a task too
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "authkey": bytes(mp.current_process().authkey),
        "key_in_env": KEY_ENV in os.environ,
        "qt": os.environ.get("QT_QPA_PLATFORM"),
        "cwd": os.getcwd(),
    }


def first_draw(_: Any) -> tuple[int, float]:
    import numpy

    time.sleep(0.05)
    return os.getpid(), float(numpy.random.random())


def start_grandchild_then_hang(pidfile: str) -> None:
    child = subprocess.Popen(["sleep", "300"])  # in the worker's process group
    Path(pidfile).write_text(str(child.pid))
    time.sleep(3600)


def _running(pid: int) -> bool:
    # An orphan that has exited waits as a zombie until the init process
    # reaps it, which here can take seconds: it runs no more.
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _children_of(pid: int) -> set[int]:
    return {p.pid for p in psutil.Process(pid).children()}


def test_workers_are_forked_by_one_server_per_process_and_act_as_spawned_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("QT_QPA_PLATFORM")
    monkeypatch.chdir(tmp_path)
    # worker_view lives in this test module: the workers find it from another
    # folder only through the path (or the module would go by value).
    root = str(Path(__file__).resolve().parents[2])
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )
    views = []
    for method in ("forkserver", "forkserver", "spawn"):  # the second reuses the server
        with Cluster(2, start_method=method) as c:
            c.wait_for_workers(2, timeout=30)
            views.append(list(c.map(worker_view, range(8))))
    servers = forkserver.server_pids()
    for run in views[:2]:
        assert len({v["pid"] for v in run}) == 2
        for v in run:
            assert v["ppid"] in servers
            assert v["pgid"] == v["pid"]  # a process group of its own
    assert {v["ppid"] for run in views[:2] for v in run} == {views[0][0]["ppid"]}
    # What a task sees of its process is the same either way.
    same = ("authkey", "key_in_env", "qt", "cwd")
    assert {tuple(v[k] for k in same) for run in views for v in run} == {
        (bytes(multiprocessing.current_process().authkey), True, "offscreen", str(tmp_path))
    }
    # The key reached the workers through the fork request only.
    server = views[0][0]["ppid"]
    assert KEY_ENV.encode() + b"=" not in Path(f"/proc/{server}/environ").read_bytes()
    assert KEY_ENV.encode() not in Path(f"/proc/{server}/cmdline").read_bytes()


def test_preloaded_module_is_imported_once_in_the_server_not_in_each_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    log = tmp_path / "imports.log"
    (tmp_path / "preload_probe.py").write_text(
        textwrap.dedent(
            f"""
            import os
            with open({str(log)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")

            def where(_):
                import time
                time.sleep(0.05)
                return os.getpid()
            """
        )
    )
    # A new PYTHONPATH: a new server, which the preload runs in.
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.syspath_prepend(str(tmp_path))
    import preload_probe

    log.write_text("")  # this process's own import does not count
    with Cluster(2, start_method="forkserver", preload=["preload_probe"]) as c:
        workers = set(c.map(preload_probe.where, range(20)))
    assert len(workers) == 2
    imported_in = [int(line) for line in log.read_text().split()]
    assert len(imported_in) == 1
    assert imported_in[0] in forkserver.server_pids()
    assert not workers & set(imported_in)
    # Spawned workers import it each for itself: preload does not apply.
    log.write_text("")
    with Cluster(2, start_method="spawn", preload=["preload_probe"]) as c:
        workers = set(c.map(preload_probe.where, range(20)))
    assert sorted(int(line) for line in log.read_text().split()) == sorted(workers)


def test_warm_up_imports_in_the_server_before_any_cluster_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    log = tmp_path / "imports.log"
    (tmp_path / "warm_probe.py").write_text(
        f"import os\nwith open({str(log)!r}, 'a') as f:\n    f.write(f'{{os.getpid()}}\\n')\n"
    )
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    zmqworkers.warm_up(["warm_probe"])  # returns at once; the server imports
    server = int(str(wait_for(lambda: log.exists() and log.read_text().strip(), 30)))
    assert server in forkserver.server_pids()
    with Cluster(2, start_method="forkserver") as c:
        c.wait_for_workers(2, timeout=30)
        parents = {psutil.Process(w["pid"]).ppid() for w in c.workers()}
        imported = c.map(lambda _: "warm_probe" in sys.modules, range(4))
        assert all(imported)
    assert parents == {server}
    assert log.read_text().split() == [str(server)]
    with pytest.raises(ConfigurationError, match="preload takes a list"):
        zmqworkers.warm_up("warm_probe")  # type: ignore[arg-type]


def test_a_variable_set_after_the_server_started_reaches_the_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Libraries set variables when imported (pydidas does): the same server
    # serves on, and the workers still get the controller's environment.
    with Cluster(1, start_method="forkserver") as c:
        c.wait_for_workers(1, timeout=30)
        first = psutil.Process(c.workers()[0]["pid"]).ppid()
    monkeypatch.setenv("ZMQWORKERS_TEST_SETTING", "late")
    with Cluster(1, start_method="forkserver") as c:
        c.wait_for_workers(1, timeout=30)
        assert psutil.Process(c.workers()[0]["pid"]).ppid() == first
        assert c.submit(os.environ.get, "ZMQWORKERS_TEST_SETTING").result(30) == "late"


def test_servers_for_other_environments_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    used = []
    for i in range(forkserver.MAX_SERVERS + 1):
        monkeypatch.setenv("OMP_NUM_THREADS", str(i + 1))
        with Cluster(1, start_method="forkserver") as c:
            c.wait_for_workers(1, timeout=30)
            used.append(psutil.Process(c.workers()[0]["pid"]).ppid())
    assert len(set(used)) == len(used)  # a server per environment
    assert len(forkserver._servers) <= forkserver.MAX_SERVERS
    assert not psutil.pid_exists(used[0])  # the oldest idle one was ended (and reaped)
    assert used[-1] in forkserver.server_pids()


def test_a_preload_that_starts_a_thread_is_dropped_and_workers_still_fork(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "threaded_probe.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
    )
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    with Cluster(2, start_method="forkserver", preload=["threaded_probe"]) as c:
        c.wait_for_workers(2, timeout=30)
        parents = {psutil.Process(w["pid"]).ppid() for w in c.workers()}
        assert list(c.map(nap, [0.01] * 4)) == [0.01] * 4
    assert "preloading 'threaded_probe' started a thread" in caplog.text
    # Forked all the same, by a server that did not import it.
    assert len(parents) == 1 and parents <= forkserver.server_pids()
    assert os.getpid() not in parents


def test_workers_forked_from_one_template_draw_different_random_numbers() -> None:
    import numpy  # noqa: F401  (numpy in the controller: the server preloads it)

    with Cluster(2, start_method="forkserver") as c:
        c.wait_for_workers(2, timeout=30)
        draws: dict[int, set[float]] = {}
        for pid, value in c.map(first_draw, range(8)):
            draws.setdefault(pid, set()).add(value)
    assert len(draws) == 2
    first, second = draws.values()
    assert not first & second  # the same state would give the same sequence


@BOTH
def test_a_sigkilled_worker_is_told_as_such_replaced_and_its_task_run_again(
    start_method: str,
) -> None:
    c = CountingCluster(2, start_method=start_method)
    try:
        c.wait_for_workers(2, timeout=30)
        victim = c.workers()[0]["pid"]
        futs = [c.submit(nap, 0.1) for _ in range(30)]
        wait_for(lambda: c.counters()["running"] == 2, 30)
        os.kill(victim, signal.SIGKILL)
        assert [f.result(60) for f in futs] == [0.1] * 30
        assert set(c.deliveries.values()) == {1}
        lost = [d for _, n, d in c.events if n == "worker_lost"]
        assert len(lost) == 1 and "killed by SIGKILL" in lost[0]["how"]
        wait_for(lambda: len(c.workers()) == 2, 30)
        assert victim not in {w["pid"] for w in c.workers()}
    finally:
        c.shutdown(wait=False, cancel_futures=True)


@BOTH
def test_a_task_that_kills_its_workers_fails_and_the_run_goes_on(start_method: str) -> None:
    with Cluster(2, max_attempts=2, start_method=start_method) as c:
        fut = c.submit(poison, 13)
        with pytest.raises(WorkerLost) as info:
            fut.result(60)
        assert [how for _, how in info.value.deaths] == [
            "killed by SIGKILL: " + ("out of memory, or killed by hand?")
        ] * 2
        assert list(c.map(poison, [1, 2, 3])) == [1, 2, 3]


def test_ending_a_worker_that_does_not_leave_ends_its_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    c = Cluster(1, stop_timeout=0.5, start_method="forkserver")
    try:
        c.submit(start_grandchild_then_hang, str(pidfile))
        grandchild = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 30))
    finally:
        c.shutdown(wait=True, cancel_futures=True)
    try:
        wait_for(lambda: not _running(grandchild), 10)
    finally:
        if _running(grandchild):
            os.kill(grandchild, signal.SIGKILL)


CONTROLLER = textwrap.dedent(
    """
    import os, sys, time
    from zmqworkers import Cluster
    from zmqworkers.controller import forkserver

    c = Cluster(2, start_method="forkserver")
    c.wait_for_workers(2, timeout=30)
    fut = c.submit(time.sleep, 3600)
    print("PIDS", *forkserver.server_pids(), *[w["pid"] for w in c.workers()], flush=True)
    time.sleep(3600)
    """
)


def test_the_fork_server_and_its_workers_do_not_outlive_a_killed_controller() -> None:
    script = subprocess.Popen(
        [sys.executable, "-c", CONTROLLER],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert script.stdout is not None
        line = script.stdout.readline()
        assert line.startswith("PIDS"), line
        pids = [int(p) for p in line.split()[1:]]
        assert len(pids) == 3
        server, workers = pids[0], pids[1:]
        assert _children_of(server) == set(workers)
        script.kill()
        script.wait(10)
        # Within 2 s: sooner than the workers' own heartbeat watch (3 s)
        # would notice that the controller is gone.
        wait_for(lambda: not any(_running(p) for p in pids), 2)
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
            script.wait(10)
        assert script.stdout is not None
        script.stdout.close()


def test_a_killed_fork_server_is_replaced_and_the_run_goes_on() -> None:
    with Cluster(2, start_method="forkserver") as c:
        c.wait_for_workers(2, timeout=30)
        old = {w["pid"] for w in c.workers()}
        server = psutil.Process(next(iter(old))).ppid()
        os.kill(server, signal.SIGKILL)
        # Its orphaned workers leave; new ones come from a new server.
        wait_for(lambda: not old & {w["pid"] for w in c.workers()} and len(c.workers()) == 2, 30)
        assert list(c.map(nap, [0.01] * 10)) == [0.01] * 10
        assert server not in forkserver.server_pids()


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"start_method": "fork"}, "start_method must be one of 'forkserver', 'spawn', not 'fork'"),
        ({"preload": "numpy"}, "preload takes a list of module names"),
        ({"preload": ["numpy", "no such"]}, "preload: 'no such' is not a module name"),
    ],
)
def test_bad_start_options_are_named(options: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigurationError, match=error):
        Cluster(1, **options)


def _forked_workers() -> set[int]:
    """The running children of this process's fork servers."""
    children = {pid for server in forkserver.server_pids() for pid in _children_of(server)}
    return {pid for pid in children if _running(pid)}


def test_workers_asked_for_before_a_bind_that_fails_do_not_outlive_it() -> None:
    # Local workers are asked of the fork server before the controller's
    # sockets are bound, so that they start meanwhile: when the bind fails,
    # they end with it rather than dial an address nobody will bind.
    # Forked workers have the server's command line (here pytest's): they
    # are found as the servers' children, not by name.
    before = _forked_workers()
    ctx: zmq.Context[Any] = zmq.Context()
    taken = ctx.socket(zmq.ROUTER)
    try:
        port = taken.bind_to_random_port("tcp://127.0.0.1")
        with pytest.raises(zmq.ZMQError, match="in use"):
            Cluster(2, bind=f"tcp://127.0.0.1:{port}", start_method="forkserver")
        # The server forks in the order asked: once this worker has come,
        # the two asked for before it were forked too.
        with Cluster(1, start_method="forkserver") as c:
            c.wait_for_workers(1, timeout=30)
            (pid,) = {w["pid"] for w in c.workers()}
            wait_for(lambda: _forked_workers() - before == {pid}, 15)
    finally:
        taken.close(linger=0)
        ctx.term()


def test_workers_asked_for_early_for_an_address_not_bound_are_ended_as_expected() -> None:
    # The bind may end up elsewhere (ipc refused: local workers go over
    # TCP): those asked for early are ended, and their exits are no losses.
    local = LocalWorkers(new_key(), 1, {}, 2, "forkserver")
    local.start_early("ipc:///nonexistent-zmqworkers-folder/tasks", 2)
    local.start("tcp://127.0.0.1:9", 0)  # bound elsewhere after all; none wanted now
    early = set(local.procs)
    assert len(early) == 2
    exits: list[Exit] = []
    wait_for(lambda: bool(exits.extend(local.reap())) or len(exits) == 2, 15)
    assert {e.pid for e in exits} == early
    assert all(e.expected and not e.renew for e in exits), exits
