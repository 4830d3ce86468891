"""pydidas's apps on pydidas's own AppRunner and on zmqworkers', side by side.

    .venv-pydidas/bin/python benchmarks/pydidas_apps.py            # medians of 3
    .venv-pydidas/bin/python benchmarks/pydidas_apps.py --repeat 5 --jobs mp_test_app

(``bash scripts/pydidas-venv.sh`` makes that environment.) Jobs:

  mp_test_app  pydidas.unittest_objects.mp_test_app.MpTestApp: 40 tiny tasks
  composite    CompositeCreatorApp over 24 .npy images (30 x 40), prepared
               as pydidas's composite frame prepares it

Systems, each with 2 worker processes:

  pydidas      pydidas.multiprocessing.AppRunner
  zmq          zmqworkers.AppRunner, local workers (started by the run) forked
               from a fork server that the run starts (a cold start: the
               server imports the app's module, hence pydidas, once)
  zmq_warm     the same, timed on a second run in the same process: the fork
               server of the first (untimed) run forks warm workers
  zmq_warm_up  the same as zmq, with zmqworkers.warm_up(["pydidas.apps"])
               called when the program starts, before it imports pydidas
               (as a GUI would at its start): the server imports while the
               program does; the clock starts after, as for the others
  zmq_spawn    zmqworkers.AppRunner(start_method="spawn"): each worker
               process imports pydidas itself
  zmq_daemon   zmqworkers.AppRunner serving a `zmqworkers worker --processes 2`
               daemon that is already running, as on a facility cluster
  zmq_daemon_again
               the same, timing the second run in the controller process
               (a fresh app, right after an untimed first run): the daemon's
               processes are still dialling this controller, so what is
               left is the run itself

Every measurement runs in a fresh process (``--one JOB SYSTEM``) and times
one run, from constructing the runner to the app that was handed over
holding every result; importing pydidas and building the app come before.
Each run's results are checked (the composite is complete; the composite
job's is equal across systems). The daemon has run each job once before it
is timed, so its processes have imported pydidas already.

Other jobs can join: add ``JOBS[name] = (setup, check)`` (see ``Job``), or
import this module and call ``main(jobs=...)``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SYSTEMS = [
    "pydidas",
    "zmq",
    "zmq_warm",
    "zmq_warm_up",
    "zmq_spawn",
    "zmq_daemon",
    "zmq_daemon_again",
]
N_WORKERS = 2

# setup(workdir) -> the app, ready to hand to a runner;
# check(app) -> a digest of its results (raises if they are incomplete).
Job = tuple[Callable[[Path], Any], Callable[[Any], str]]


def _digest(array: Any) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def _mp_test_app(workdir: Path) -> Any:
    from pydidas.unittest_objects.mp_test_app import MpTestApp

    return MpTestApp()


def _mp_test_app_check(app: Any) -> str:
    import numpy as np

    image = app._composite.image
    if image.shape != (80, 200) or not np.all(image > 0):
        raise AssertionError("MpTestApp's composite is incomplete")
    # Random images: only completeness can be compared across systems.
    return f"complete {image.shape}"


def write_images(folder: Path, n: int = 24, shape: tuple[int, int] = (30, 40)) -> list[Path]:
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rows, cols = np.indices(shape, dtype=np.float64)
    paths = []
    for i in range(n):
        path = folder / f"image_{i:03d}.npy"
        if not path.exists():
            np.save(path, 1000.0 * i + rows * shape[1] + cols + 0.25)
        paths.append(path)
    return paths


def prepared_composite_app(files: list[Path]) -> Any:
    """A CompositeCreatorApp over ``files``, prepared as pydidas's composite frame does it."""
    from pydidas.apps import CompositeCreatorApp

    app = CompositeCreatorApp()
    app.set_param_value("first_file", files[0])
    app.set_param_value("last_file", files[-1])
    app.set_param_value("composite_nx", 6)
    app.set_param_value("composite_ny", 4)
    app._filelist.update()
    app._image_metadata.filename = files[0]
    app._image_metadata.update()
    app.multiprocessing_pre_run()
    return app


def _composite(workdir: Path) -> Any:
    return prepared_composite_app(write_images(workdir / "images"))


def _composite_check(app: Any) -> str:
    import numpy as np

    if app.composite.shape != (120, 240) or np.count_nonzero(app.composite == 0):
        raise AssertionError("the composite is incomplete")
    return _digest(app.composite)


JOBS: dict[str, Job] = {
    "mp_test_app": (_mp_test_app, _mp_test_app_check),
    "composite": (_composite, _composite_check),
}


def _complete(check: Callable[[Any], str], app: Any) -> bool:
    try:
        check(app)
    except (AssertionError, AttributeError, TypeError):
        return False
    return True


def measure(job: str, system: str, workdir: Path, address: str, key: str) -> dict[str, Any]:
    """One timed run in this process (after an untimed one for ``zmq_warm``, ``*_again``)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if system == "zmq_warm_up":
        import zmqworkers

        zmqworkers.warm_up(["pydidas.apps"])
    setup, check = JOBS[job]
    app = setup(workdir)
    from pydidas_qtcore import PydidasQApplication

    qapp = PydidasQApplication.instance() or PydidasQApplication([])
    if system == "zmq_warm" or system.endswith("_again"):
        system = system.removesuffix("_again")
        _run(system, app, check, qapp, address, key)
        app = setup(workdir)
    seconds = _run(system, app, check, qapp, address, key)
    return {"seconds": seconds, "digest": check(app)}


def _run(
    system: str, app: Any, check: Callable[[Any], str], qapp: Any, address: str, key: str
) -> float:
    from qtpy import QtCore

    t0 = time.perf_counter()
    if system == "pydidas":
        from pydidas.multiprocessing import AppRunner

        runner = AppRunner(app, n_workers=N_WORKERS)
    else:
        import zmqworkers

        if system in ("zmq", "zmq_warm", "zmq_warm_up"):
            runner = zmqworkers.AppRunner(app, n_workers=N_WORKERS, start_method="forkserver")
        elif system == "zmq_spawn":
            runner = zmqworkers.AppRunner(app, n_workers=N_WORKERS, start_method="spawn")
        else:
            runner = zmqworkers.AppRunner(app, n_workers=0, bind=address, key=key)
    errors: list[Any] = []
    if hasattr(runner, "sig_error"):
        runner.sig_error.connect(lambda task, err: errors.append((task, err)))
    loop = QtCore.QEventLoop()
    runner.finished.connect(loop.quit)
    QtCore.QTimer.singleShot(120_000, loop.quit)
    runner.start()
    loop.exec()
    # The given app's stores arrive queued: done once it holds every result.
    deadline = time.monotonic() + 30
    while not _complete(check, app) and time.monotonic() < deadline:
        qapp.processEvents()
    seconds = time.perf_counter() - t0
    runner.exit()
    # pydidas's thread may still wind down after exit(); leaving before it
    # ends aborts the process ("QThread: Destroyed while thread is still running").
    runner.wait(30_000)
    if errors:
        raise RuntimeError(f"{len(errors)} task(s) failed, the first: {errors[0]!r}")
    return seconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one(job: str, system: str, workdir: Path, address: str, key: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", job, system, "--workdir", str(workdir)]
    cmd += ["--address", address]
    env = dict(os.environ, ZMQWORKERS_KEY=key, QT_QPA_PLATFORM="offscreen", QT_API="pyside6")
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"{job} on {system} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None, jobs: dict[str, Job] | None = None) -> int:
    if jobs:
        JOBS.update(jobs)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--jobs", default=",".join(JOBS))
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--one", nargs=2, metavar=("JOB", "SYSTEM"), help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--address", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        key = os.environ.get("ZMQWORKERS_KEY", "")
        result = measure(*args.one, Path(args.workdir), args.address, key)
        print(json.dumps(result), flush=True)
        return 0

    jobs_wanted = [j for j in args.jobs.split(",") if j]
    systems = [s for s in args.systems.split(",") if s]
    unknown = [j for j in jobs_wanted if j not in JOBS] + [s for s in systems if s not in SYSTEMS]
    if unknown:
        p.error(f"unknown job or system: {', '.join(unknown)}")
    key = secrets.token_hex(16)
    address = f"tcp://127.0.0.1:{_free_port()}"
    daemon = None
    with tempfile.TemporaryDirectory(prefix="pydidas-bench-") as tmp:
        workdir = Path(tmp)
        if any(s.startswith("zmq_daemon") for s in systems):
            env = dict(os.environ, ZMQWORKERS_KEY=key, QT_API="pyside6")
            cmd = [sys.executable, "-m", "zmqworkers", "worker", address]
            cmd += ["--processes", str(N_WORKERS), "--death-timeout", "600"]
            daemon = subprocess.Popen(
                cmd, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        try:
            table: dict[str, dict[str, float]] = {}
            for job in jobs_wanted:
                if daemon is not None:
                    _one(job, "zmq_daemon", workdir, address, key)  # the daemon's warm-up
                digests: dict[str, str] = {}
                for system in systems:
                    times = []
                    for _ in range(args.repeat):
                        r = _one(job, system, workdir, address, key)
                        times.append(r["seconds"])
                        digests.setdefault(system, r["digest"])
                        if r["digest"] != digests[system]:
                            raise RuntimeError(f"{job} on {system}: results differ between runs")
                    table.setdefault(job, {})[system] = statistics.median(times)
                    print(f"{job:12s} {system:17s} " + " ".join(f"{t:6.2f}" for t in times))
                if len(set(digests.values())) != 1:
                    raise RuntimeError(f"{job}: results differ between systems: {digests}")
        finally:
            if daemon is not None:
                daemon.terminate()
                try:
                    daemon.wait(40)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait(10)
    print(f"\nmedians of {args.repeat} (s), and pydidas's time over each")
    for job, row in table.items():
        base = row.get("pydidas")
        cells = [
            f"{s} {t:.2f} s" + (f" ({base / t:.1f}x)" if base and s != "pydidas" else "")
            for s, t in row.items()
        ]
        print(f"  {job:12s} " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
