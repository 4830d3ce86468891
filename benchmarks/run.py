"""Side-by-side benchmarks: zmqworkers against its peers, in one run.

    python benchmarks/run.py                 # everything, medians of 3
    python benchmarks/run.py --quick         # smaller sizes, for a smoke run
    python benchmarks/run.py --scenarios a,b --repeat 5

Each measurement runs in a fresh subprocess (``--one SCENARIO SYSTEM``) so
that no run inherits another's workers, caches or memory. The orchestrator
repeats each, prints medians and ratios as a table, writes
``benchmarks/results/results.json`` and draws ``throughput_vs_payload.png``.

Peers: multiprocessing.Pool, ProcessPoolExecutor, Dask distributed
(LocalCluster) and a raw pyzmq ceiling, over loopback TCP (``raw``) and over
Unix sockets (``raw_ipc``, the transport of zmqworkers' local workers).
Missing peers are installed into ``benchmarks/.venv`` (which also sees the
packages of the interpreter that runs this script, a virtual environment's
included) and the run continues there.

Scenarios:
  a  tiny no-op tasks per second (Cluster.imap_unordered, Cluster.map,
     WorkerController, two daemons on loopback TCP; Pool.imap_unordered
     (chunksize=1), ProcessPoolExecutor, Dask, raw PUSH/PULL over TCP and ipc)
  b  round trips of 8 MiB float64 arrays, GB/s moved (both directions); zmq:
     local workers through shared memory, zmq_socket: the same through the
     socket, zmq_daemons: two daemons on loopback TCP
  c  heterogeneous durations: makespan against the ideal list schedule
  d  time to first result, from constructing the pool with 2 fresh workers
     (each library imported beforehand; zmq: the default start, forked from
     a fork server that the run starts, itself forked from the controller;
     zmq_spawn: start_method="spawn"; zmq_warm: a second Cluster in the same
     process, forked from the fork server the first one started)
  e  controller memory: 1,000,000 queued tasks, and a soak streamed through
     (RSS growth over its second half, lowest sample to lowest sample;
     per-sample detail and the Python heap's block count on stderr)
  f  throughput against the number of worker processes (1 to 64)
  g  throughput against task payload size (the PNG plot)
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / ".venv"
RESULTS = HERE / "results"
PEER_PACKAGES = ["dask[distributed]", "matplotlib", "psutil"]

SYSTEMS: dict[str, list[str]] = {
    "a": ["zmq_imap", "zmq_map", "zmq_qt", "zmq_daemons", "pool", "ppe", "dask", "raw", "raw_ipc"],
    "b": ["zmq", "zmq_socket", "zmq_daemons", "pool", "ppe", "dask", "raw", "raw_ipc", "memcpy"],
    "c": ["zmq", "pool", "dask"],
    "d": ["zmq", "zmq_spawn", "zmq_warm", "pool_spawn", "pool_fork", "dask"],
    "e": ["zmq_queued", "zmq_soak"],
    "f": ["zmq"],
    "g": ["zmq", "pool", "raw", "raw_ipc"],
}
UNITS = {
    "a": "tasks/s",
    "b": "GB/s",
    "c": "x ideal",
    "d": "s",
    "e": "MB",
    "f": "tasks/s",
    "g": "tasks/s",
}
HIGHER_IS_BETTER = {"a": True, "b": True, "c": False, "d": False, "e": False, "f": True, "g": True}


# --------------------------------------------------------------------------
# task functions (module level so every peer can pickle them by reference)


def noop(x: Any) -> Any:
    return x


def sleep_task(d: float) -> float:
    time.sleep(d)
    return d


# --------------------------------------------------------------------------
# raw pyzmq ceiling: PUSH tasks to N worker processes, PULL results back


RAW_WORKER = r"""
import sys, zmq
ctx = zmq.Context()
pull = ctx.socket(zmq.PULL); pull.connect(sys.argv[1])
push = ctx.socket(zmq.PUSH); push.connect(sys.argv[2])
while True:
    frames = pull.recv_multipart(copy=False)
    if len(frames[0]) == 0:
        break
    push.send_multipart(frames, copy=False)
"""


def raw_round_trips(payloads: list[Any], n_workers: int = 2, system: str = "raw") -> float:
    """Seconds to send every payload through a worker and back (zero-copy).

    ``system`` "raw" uses loopback TCP (what daemons on this host use),
    "raw_ipc" Unix sockets (what zmqworkers' local workers use).
    """
    with raw_echo(system, n_workers) as (push, pull, _):
        return pipelined(push, pull, payloads)


@contextmanager
def raw_echo(system: str = "raw", n_workers: int = 2) -> Iterator[tuple[Any, Any, list[int]]]:
    """A PUSH and a PULL socket joined through ``n_workers`` echo processes.

    Yields them with the workers' pids once every worker has answered (the
    warm-up), and ends the workers and the sockets afterwards.
    """
    import tempfile

    import zmq

    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    pull = ctx.socket(zmq.PULL)
    push.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.LINGER, 0)
    folder = tempfile.mkdtemp(prefix="raw-zmq-")
    if system == "raw_ipc":
        push.bind(f"ipc://{folder}/tasks")
        pull.bind(f"ipc://{folder}/results")
    else:
        push.bind("tcp://127.0.0.1:*")
        pull.bind("tcp://127.0.0.1:*")
    out_ep = push.getsockopt_string(zmq.LAST_ENDPOINT)
    in_ep = pull.getsockopt_string(zmq.LAST_ENDPOINT)
    procs = [
        subprocess.Popen([sys.executable, "-c", RAW_WORKER, out_ep, in_ep])
        for _ in range(n_workers)
    ]
    try:
        # Warm up: every worker connected before the clock starts.
        for _ in range(n_workers * 20):
            push.send(b"w")
        for _ in range(n_workers * 20):
            pull.recv()
        yield push, pull, [p.pid for p in procs]
    finally:
        for _ in procs:
            push.send(b"")
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        push.close()
        pull.close()
        ctx.term()
        shutil.rmtree(folder, ignore_errors=True)


def pipelined(push: Any, pull: Any, payloads: list[Any]) -> float:
    """Seconds to send ``payloads`` out on ``push`` and take as many back on ``pull``.

    Pipelined: up to 1,000 messages (every array of scenario b) in flight,
    so that this really is the transport's ceiling.
    """
    window = min(len(payloads), 1000)
    t0 = time.perf_counter()
    sent = got = 0
    n = len(payloads)
    while got < n:
        while sent < n and sent - got < window:
            push.send(payloads[sent], copy=False)
            sent += 1
        pull.recv(copy=False)
        got += 1
    return time.perf_counter() - t0


# --------------------------------------------------------------------------
# scenario bodies: each returns one number in the scenario's unit


def a_tiny(system: str, n: int) -> float:
    tasks = range(n)
    if system in ("raw", "raw_ipc"):
        payload = [b"x" * 8] * n
        return n / raw_round_trips(payload, system=system)
    t = _with_pool(system, lambda run: run(noop, tasks, unordered=True), warm=True)
    return n / t


def _warm_list(items: Any) -> list[Any]:
    """Copies of the warm-up items, at least 8 MiB of them, so every worker gets some.

    A few items alone may all go to one worker (one batch), and the other
    would then be timed importing numpy on its first array. Copies, not the
    same objects again: pickle sends a repeated object once per message, so
    repeats would teach the batcher a payload size far below the real one.
    """
    items = list(items)
    nbytes = sum(getattr(x, "nbytes", 8) for x in items) or 1
    repeats = max(2, -(-(8 << 20) // nbytes))
    return [copy.copy(x) for _ in range(repeats) for x in items]


def _with_pool(system: str, body: Any, warm: bool = True, warm_items: Any = ()) -> float:
    """Time ``body(run)`` on a 2-worker pool of ``system``; workers up first.

    ``warm_items`` go through ``noop`` before the clock starts, so that no
    system is timed importing what the payload needs (numpy).
    """
    if system == "zmq_qt":
        return _qt_run(body)
    with _runner(system, warm) as run:
        if warm_items:
            run(noop, _warm_list(warm_items), unordered=True)
        t0 = time.perf_counter()
        body(run)
        return time.perf_counter() - t0


@contextmanager
def _runner(system: str, warm: bool) -> Iterator[Any]:
    """A started 2-worker pool of ``system``, as ``run(fn, xs, unordered)``."""
    if system in ("zmq_imap", "zmq_map", "zmq", "zmq_socket", "zmq_daemons"):
        with _zmq_cluster(system) as c:
            c.wait_for_workers(2)
            if warm:
                list(c.map(noop, range(100)))

            def run_zmq(fn: Any, xs: Any, unordered: bool = False) -> None:
                ordered = system == "zmq_map" or not unordered
                for _ in c.map(fn, xs) if ordered else c.imap_unordered(fn, xs):
                    pass

            yield run_zmq
    elif system in ("pool", "pool_spawn"):
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(2) as pool:
            pool.map(noop, range(4))

            def run_pool(fn: Any, xs: Any, unordered: bool = False) -> None:
                for _ in pool.imap_unordered(fn, xs, chunksize=1):
                    pass

            yield run_pool
    elif system == "ppe":
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures import as_completed as ppe_completed

        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
            list(ex.map(noop, range(4)))

            def run_ppe(fn: Any, xs: Any, unordered: bool = False) -> None:
                for _ in ppe_completed([ex.submit(fn, x) for x in xs]):
                    pass

            yield run_ppe
    elif system == "dask":
        from dask.distributed import Client, LocalCluster
        from dask.distributed import as_completed as dask_completed

        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as lc,
            Client(lc) as client,
        ):
            client.gather(client.map(noop, range(4), pure=False))

            def run_dask(fn: Any, xs: Any, unordered: bool = False) -> None:
                for _ in dask_completed(client.map(fn, list(xs), pure=False)):
                    pass

            yield run_dask
    else:
        raise ValueError(f"unknown system {system}")


@contextmanager
def _zmq_cluster(system: str) -> Iterator[Any]:
    """A 2-worker Cluster: local workers (through shared memory, or with
    ``zmq_socket`` through the socket), or ``zmq_daemons``: two daemons on
    loopback TCP, as daemons on other hosts would dial."""
    import secrets

    from zmqworkers import Cluster
    from zmqworkers.security.keys import KEY_ENV

    if system != "zmq_daemons":
        with Cluster(2, shared_memory=system != "zmq_socket") as c:
            yield c
        return
    key = secrets.token_hex(32)
    env = dict(os.environ, **{KEY_ENV: key})
    with Cluster(0, key=key) as c:
        cmd = [sys.executable, "-m", "zmqworkers", "worker", c.address]
        daemons = [subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL) for _ in range(2)]
        try:
            yield c
        finally:
            for d in daemons:
                d.terminate()
            for d in daemons:
                try:
                    d.wait(10)
                except subprocess.TimeoutExpired:
                    d.kill()
                    d.wait()


def _qt_run(body: Any) -> float:
    from qtpy import QtTest

    from zmqworkers import WorkerController

    wc = WorkerController(2)

    def run(fn: Any, xs: Any, unordered: bool = False) -> None:
        xs = list(xs)
        spy = QtTest.QSignalSpy(wc.sig_results)
        # PyQt's spy is a sequence; PySide6's has count().
        count = spy.count if hasattr(spy, "count") else spy.__len__
        wc.change_function(fn)
        wc.add_tasks(xs)
        if not wc.isRunning():
            wc.start()
        deadline = time.monotonic() + 600
        while count() < len(xs):
            if time.monotonic() > deadline:
                raise TimeoutError("WorkerController did not finish")
            time.sleep(0.001)

    try:
        run(noop, range(100))  # workers up and warm
        t0 = time.perf_counter()
        body(run)
        return time.perf_counter() - t0
    finally:
        wc.stop()
        wc.wait(30_000)


def b_arrays(system: str, n: int, mib: int = 8) -> float:
    import numpy as np

    arrays = [np.full(mib * 1024 * 1024 // 8, float(i)) for i in range(n)]
    moved = 2 * n * mib * 1024 * 1024 / 1e9  # there and back
    if system == "memcpy":
        dst = np.empty_like(arrays[0])
        t0 = time.perf_counter()
        for a in arrays:
            np.copyto(dst, a)
            np.copyto(a, dst)
        return moved / (time.perf_counter() - t0)
    if system in ("raw", "raw_ipc"):
        return moved / raw_round_trips(arrays, system=system)
    return moved / _with_pool(
        system, lambda run: run(noop, arrays, unordered=True), warm_items=arrays[:4]
    )


def c_makespan(system: str, n: int) -> float:
    sys.path.insert(0, str(HERE))
    from dispatch_makespan import durations, ideal_list_schedule

    ds = durations(n)
    ideal = ideal_list_schedule(ds, 2)
    return _with_pool(system, lambda run: run(sleep_task, ds, unordered=True)) / ideal


def d_first_result(system: str) -> float:
    # From constructing the pool: each library is imported first, as a
    # program has imported it before it makes its pool.
    if system.startswith("zmq"):
        from zmqworkers import Cluster

        t0 = time.perf_counter()
        options = {"start_method": "spawn"} if system == "zmq_spawn" else {}
        if system == "zmq_warm":
            with Cluster(2) as c:  # starts this process's fork server
                c.submit(noop, 1).result()
            t0 = time.perf_counter()
        with Cluster(2, **options) as c:
            c.submit(noop, 1).result()
            t = time.perf_counter() - t0
        return t
    if system in ("pool_spawn", "pool_fork"):
        import multiprocessing
        import multiprocessing.pool

        t0 = time.perf_counter()
        ctx = multiprocessing.get_context(system.split("_")[1])
        with ctx.Pool(2) as pool:
            pool.apply(noop, (1,))
            return time.perf_counter() - t0
    if system == "dask":
        from dask.distributed import Client, LocalCluster

        t0 = time.perf_counter()
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as lc,
            Client(lc) as client,
        ):
            client.submit(noop, 1).result()
            return time.perf_counter() - t0
    raise ValueError(system)


def e_memory(system: str, n: int) -> float:
    import psutil

    from zmqworkers import Cluster

    proc = psutil.Process()
    if system == "zmq_queued":
        with Cluster(0) as c:
            base = proc.memory_info().rss
            it = c.map(noop, range(n))  # no workers: every task stays queued
            while c.counters()["queued"] < n:
                time.sleep(0.05)
            used = proc.memory_info().rss - base
            c.shutdown(wait=False, cancel_futures=True)
            del it
        return used / 1e6
    # soak: n tasks of an endless stream (so that no sample falls in the
    # final drain), RSS and the Python heap's block count sampled 200 times.
    # The number is RSS growth over the second half, floor to floor: the
    # lowest sample of the last quarter minus the lowest of the second.
    # glibc's mmap threshold is pinned at its default starting value: left
    # adaptive, it moves large freed blocks (dict tables) between mmap and
    # its heap, and RSS steps by ~10 MB either way with nothing kept.
    pinned = _pin_mmap_threshold()
    with Cluster(2) as c:
        c.wait_for_workers(2)
        every = max(1, n // 200)
        rss: list[float] = []
        blocks: list[int] = []
        for i, _ in enumerate(c.imap_unordered(noop, itertools.count()), 1):
            if i % every == 0:
                rss.append(proc.memory_info().rss / 1e6)
                blocks.append(sys.getallocatedblocks())
            if i >= n:
                break
        q = len(rss) // 4
        growth = min(rss[3 * q :]) - min(rss[q : 2 * q])
        tenth = max(1, len(rss) // 10)
        detail = {
            "mmap_threshold_pinned": pinned,
            "soak_rss_mb": [round(r, 2) for r in rss[tenth - 1 :: tenth]],
            "rss_floor_mb": [round(min(rss[q : 2 * q]), 2), round(min(rss[3 * q :]), 2)],
            "rss_10pct_to_end_mb": round(rss[-1] - rss[tenth - 1], 2),
            "heap_blocks": blocks[tenth - 1 :: tenth],
            "heap_blocks_growth_second_half": min(blocks[3 * q :]) - min(blocks[q : 2 * q]),
        }
        print(json.dumps(detail), file=sys.stderr)
        return growth


def _pin_mmap_threshold() -> bool:
    """Fix glibc's M_MMAP_THRESHOLD at 128 KiB; False where there is no mallopt.

    Said in the environment too, as a user tunes malloc: zmqworkers then
    leaves the thresholds as they are (zmqworkers/heap.py), in this process
    and in the workers it starts.
    """
    import ctypes

    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    try:
        return bool(ctypes.CDLL(None).mallopt(-3, 128 * 1024))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def f_scaling(n_workers: int, n: int) -> float:
    from zmqworkers import Cluster

    with Cluster(n_workers) as c:
        c.wait_for_workers(n_workers, timeout=300)
        list(c.map(noop, range(1000)))
        t0 = time.perf_counter()
        for _ in c.imap_unordered(noop, range(n)):
            pass
        return n / (time.perf_counter() - t0)


def g_payload(system: str, size: int, n: int) -> float:
    import numpy as np

    xs = [np.ones(max(1, size // 8)) for _ in range(n)]
    if system in ("raw", "raw_ipc"):
        return n / raw_round_trips(xs, system=system)
    return n / _with_pool(system, lambda run: run(noop, xs, unordered=True), warm_items=xs[:4])


# --------------------------------------------------------------------------
# orchestration


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "a": 20_000,
            "b": 16,
            "c": 100,
            "e_queued": 200_000,
            # Past the first 100,000 (the imap window filling): the second
            # quarter, the soak's baseline, must be steady already.
            "e_soak": 1_000_000,
            "f": [1, 2, 8],
            "f_n": 20_000,
            "g": [1024, 65536, 1 << 20],
            "g_n": 200,
        }
    return {
        "a": 100_000,
        "b": 64,
        "c": 200,
        "e_queued": 1_000_000,
        "e_soak": 10_000_000,
        "f": [1, 2, 4, 8, 16, 32, 64],
        "f_n": 100_000,
        "g": [1024, 16384, 65536, 262144, 1 << 20, 4 << 20],
        "g_n": 400,
    }


def one(scenario: str, system: str, quick: bool, param: int | None) -> float:
    sz = sizes(quick)
    if scenario == "a":
        a_n = sz["a"] if system not in ("ppe", "dask") else min(sz["a"], 20_000)
        return a_tiny(system, a_n)
    if scenario == "b":
        return b_arrays(system, sz["b"])
    if scenario == "c":
        return c_makespan(system, sz["c"])
    if scenario == "d":
        return d_first_result(system)
    if scenario == "e":
        return e_memory(system, sz["e_queued"] if system == "zmq_queued" else sz["e_soak"])
    if scenario == "f":
        return f_scaling(int(param or 2), sz["f_n"])
    if scenario == "g":
        return g_payload(system, int(param or 1024), sz["g_n"])
    raise ValueError(scenario)


def run_child(
    scenario: str, system: str, quick: bool, param: int | None, python: str | None = None
) -> float | None:
    """One measurement in a fresh process.

    With ``python``, that interpreter runs it with the zmqworkers installed
    in its own environment (benchmarks/compare_revisions.py); else this
    checkout's, through PYTHONPATH.
    """
    cmd = [python or sys.executable, __file__, "--one", scenario, system]
    if quick:
        cmd.append("--quick")
    if param is not None:
        cmd += ["--param", str(param)]
    env = child_env(python)
    # Timed as an installed package runs, from its cached bytecode: the
    # peers' packages have theirs from their install, and a checkout that
    # is never allowed to cache its own would compile every module anew in
    # each measurement (tens of milliseconds of a cold start).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=HERE)
    except subprocess.TimeoutExpired:
        print(f"  {scenario}/{system}: timed out", file=sys.stderr)
        return None
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        print(f"  {scenario}/{system}: failed: {tail[0]}", file=sys.stderr)
        return None
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["value"])


def child_env(python: str | None) -> dict[str, str]:
    """The environment of a measurement's process (see :func:`run_child`).

    This checkout's code comes first on its PYTHONPATH. Another revision's
    interpreter must not see this checkout at all: the caller's PYTHONPATH
    may name it, and would then shadow the revision installed there, so
    that both sides of a comparison ran the same code.
    """
    env = dict(os.environ)
    if python is None:
        env["PYTHONPATH"] = str(ROOT)
        return env
    kept = [
        entry
        for entry in env.get("PYTHONPATH", "").split(os.pathsep)
        if entry and Path(entry).resolve() != ROOT
    ]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        env.pop("PYTHONPATH", None)
    return env


def ensure_peers() -> None:
    """Re-run inside benchmarks/.venv with the peers installed, if any is missing."""
    try:
        import dask.distributed  # noqa: F401
        import matplotlib  # noqa: F401
        import psutil  # noqa: F401

        return
    except ImportError:
        pass
    if Path(sys.prefix) == VENV:
        raise SystemExit("peers are still missing inside benchmarks/.venv")
    py = make_peer_venv(VENV)
    subprocess.run([py, "-m", "pip", "install", "--quiet", *PEER_PACKAGES], check=True)
    os.execv(py, [py, __file__, *sys.argv[1:]])


PARENT_PTH = "_zmqworkers_benchmark_parent.pth"


def make_peer_venv(venv: Path) -> str:
    """A venv at ``venv`` that sees this interpreter's packages; its python.

    ``venv --system-site-packages`` would see the *base* interpreter's
    packages: run from a virtual environment, that is not where the user
    installed pyzmq and numpy. So the venv is isolated, and a ``.pth`` file
    in it adds this interpreter's site folders (processing their own
    ``.pth`` files, which editable installs rely on) after its own.
    Rewritten on every call, so the venv follows whichever interpreter runs
    the benchmark.
    """
    py = venv / "bin" / "python"
    cfg = venv / "pyvenv.cfg"
    if cfg.exists() and "include-system-site-packages = true" in cfg.read_text():
        shutil.rmtree(venv)  # made by an older run.py: it would see the base packages
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    own = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    lines = [f"import site; site.addsitedir({d!r})" for d in _site_dirs()]
    (Path(own) / PARENT_PTH).write_text("\n".join(lines) + "\n")
    return str(py)


def _site_dirs() -> list[str]:
    """This interpreter's site folders: its environment's, then the user's."""
    import site

    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--scenarios", default="a,b,c,d,e,f,g")
    p.add_argument("--one", nargs=2, metavar=("SCENARIO", "SYSTEM"))
    p.add_argument("--param", type=int)
    p.add_argument(
        "--installed-only",
        action="store_true",
        help="install nothing: leave out the peers that are not installed (Dask), "
        "and the plot without matplotlib (how the test suite runs it)",
    )
    a = p.parse_args()
    if a.one:
        value = one(a.one[0], a.one[1], a.quick, a.param)
        print(json.dumps({"value": value}))
        return
    if not a.installed_only:
        ensure_peers()
    RESULTS.mkdir(exist_ok=True)
    report: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
        "repeat": a.repeat,
        "quick": a.quick,
        "scenarios": {},
    }
    for sc in a.scenarios.split(","):
        params: list[Any] = [None]
        systems = [s for s in SYSTEMS[sc] if not a.installed_only or _installed(s)]
        if sc == "f":
            params = sizes(a.quick)["f"]
        if sc == "g":
            params = sizes(a.quick)["g"]
        out: dict[str, Any] = {}
        for param in params:
            # Interleaved (each system once per round), so that a change in
            # the machine's load falls on every system alike, not on one.
            runs: dict[str, list[float | None]] = {system: [] for system in systems}
            for _ in range(a.repeat):
                for system in systems:
                    runs[system].append(run_child(sc, system, a.quick, param))
            for system in systems:
                good = [r for r in runs[system] if r is not None]
                label = system if param is None else f"{system}@{param}"
                out[label] = {
                    "median": statistics.median(good) if good else None,
                    "runs": good,
                }
                med = out[label]["median"]
                shown = "failed" if med is None else f"{med:,.4g} {UNITS[sc]}"
                print(f"{sc}  {label:22s} {shown}", flush=True)
        report["scenarios"][sc] = out
    (RESULTS / "results.json").write_text(json.dumps(report, indent=2))
    print_ratios(report)
    if "g" in report["scenarios"] and (not a.installed_only or _importable("matplotlib")):
        plot_payload(report["scenarios"]["g"])
    failed = [
        f"{sc}/{label}"
        for sc, out in report["scenarios"].items()
        for label, v in out.items()
        if v["median"] is None
    ]
    if failed:
        # A broken benchmark fails the run (the test suite runs it --quick).
        raise SystemExit(f"failed measurements: {', '.join(failed)}")


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # its parent package is missing
        return False


def _installed(system: str) -> bool:
    """Whether ``system``'s peer is installed here (only Dask may be missing)."""
    return system != "dask" or _importable("dask.distributed")


def print_ratios(report: dict[str, Any]) -> None:
    print("\nratios (zmqworkers / peer; >1 means zmqworkers is better for rates,")
    print("for times and memory the raw figures above are what count)")
    for sc, out in report["scenarios"].items():
        meds = {k: v["median"] for k, v in out.items() if v["median"]}
        ours = {k: v for k, v in meds.items() if k.startswith("zmq")}
        peers = {k: v for k, v in meds.items() if not k.startswith("zmq")}
        for o, ov in ours.items():
            for q, qv in peers.items():
                if "@" in o and o.split("@")[1] != q.split("@")[-1]:
                    continue
                r = ov / qv if HIGHER_IS_BETTER[sc] else qv / ov
                print(f"  {sc}: {o:22s} vs {q:22s} {r:6.2f}x")
        # zmqworkers against itself: the Qt face against Cluster, and local
        # workers through shared memory against the same through the socket.
        for o, q in (("zmq_qt", "zmq_imap"), ("zmq", "zmq_socket")):
            if o in meds and q in meds and HIGHER_IS_BETTER[sc]:
                print(f"  {sc}: {o:22s} vs {q:22s} {meds[o] / meds[q]:6.2f}x")
        if sc == "d" and "zmq_spawn" in meds:
            # The start methods against each other: spawn's time over each.
            for o in ("zmq", "zmq_warm"):
                if o in meds:
                    r = meds["zmq_spawn"] / meds[o]
                    print(f"  {sc}: {o:22s} vs {'zmq_spawn':22s} {r:6.2f}x")


def plot_payload(out: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system in SYSTEMS["g"]:
        pts = sorted(
            (int(k.split("@")[1]), v["median"] * int(k.split("@")[1]) / 1e9)
            for k, v in out.items()
            if k.startswith(system + "@") and v["median"]
        )
        if pts:
            ax.plot(*zip(*pts), marker="o", label=system)
    ax.set_xscale("log")
    ax.set_xlabel("task payload (bytes, each way)")
    ax.set_ylabel("payload throughput (GB/s, one way)")
    ax.set_title("throughput against payload size, 2 workers")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "throughput_vs_payload.png", dpi=100)
    print(f"plot: {RESULTS / 'throughput_vs_payload.png'}")


if __name__ == "__main__":
    main()
