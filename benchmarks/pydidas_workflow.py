"""A pydidas workflow through ExecuteWorkflowRunner.process_scan(): pydidas's runner and ours.

    .venv-pydidas/bin/python benchmarks/pydidas_workflow.py             # 3 runs each
    .venv-pydidas/bin/python benchmarks/pydidas_workflow.py --repeat 13

The workflow is tests/interop/workflow_fixtures.py's: FrameLoader over 16
``.npy`` frames, CropAndBinImage, Sum2dData. Systems, 2 workers each:

  pydidas     pydidas's own AppRunner (shared memory; its store runs twice)
  zmq         zmqworkers.pydidas.install(): zmqworkers' runner, local workers
              (started by the run)
  zmq_daemon  zmqworkers.pydidas.install(ADDRESS, key=...): a
              `zmqworkers worker --processes 2` daemon that is already
              running (warm: it has run the workflow once before the timed
              runs, so its processes have imported pydidas), as on a
              facility cluster

Each run is a fresh process (``--one SYSTEM``) and is timed from
constructing ExecuteWorkflowRunner to the files written; it then checks
every scan point of the files against the numpy computation of the same
steps. The table gives medians, pydidas's median over ours, and how many
runs were correct.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SYSTEMS = ["pydidas", "zmq", "zmq_daemon"]
N_WORKERS = 2


def measure(system: str, workdir: Path, address: str = "") -> dict[str, Any]:
    """One timed run in this process."""
    sys.path.insert(0, str(ROOT))
    sys.argv = sys.argv[:1]  # pydidas's runner parses sys.argv itself
    from pydidas.core import PydidasQsettings
    from pydidas_qtcore import PydidasQApplication

    from tests.interop import workflow_fixtures as wf

    qapp = PydidasQApplication.instance() or PydidasQApplication([])
    workflow = wf.real_workflow(workdir / "in")
    out = Path(tempfile.mkdtemp(dir=workdir))
    settings = PydidasQsettings()
    before = settings.value("global/mp_n_workers", int)
    settings.set_value("global/mp_n_workers", N_WORKERS)
    try:
        if system.startswith("zmq"):
            import zmqworkers.pydidas as zp

            if system == "zmq_daemon":
                zp.install(address, key=os.environ["ZMQWORKERS_KEY"])
            else:
                zp.install(n_workers=N_WORKERS)
        t0 = time.perf_counter()
        wf.process_scan(workflow, out)
        seconds = time.perf_counter() - t0
    finally:
        settings.set_value("global/mp_n_workers", before)
    try:
        wf.check_outputs(out, workflow)
        correct, why = True, ""
    except AssertionError as exc:
        correct, why = False, str(exc).splitlines()[0]
    del qapp
    return {"seconds": seconds, "correct": correct, "why": why}


def _one(system: str, workdir: Path, address: str = "", key: str = "") -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", system, "--workdir", str(workdir)]
    cmd += ["--address", address]
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QT_API="pyside6", ZMQWORKERS_KEY=key)
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"the run on {system} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--one", metavar="SYSTEM", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--address", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, Path(args.workdir), args.address)))
        return 0
    systems = [s for s in args.systems.split(",") if s]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown or args.repeat < 1:
        p.error(f"systems are {', '.join(SYSTEMS)} (not {unknown}); --repeat >= 1")
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    key = secrets.token_hex(16)
    address = f"tcp://127.0.0.1:{_free_port()}"
    daemon = _start_daemon(address, key) if "zmq_daemon" in systems else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if daemon is not None:
                _one("zmq_daemon", Path(tmp), address, key)  # the daemon's warm-up
            # Interleaved, so a slow minute of a shared machine hits all.
            for _ in range(args.repeat):
                for system in systems:
                    runs[system].append(_one(system, Path(tmp), address, key))
    finally:
        if daemon is not None:
            _stop(daemon)
    medians = {s: statistics.median(r["seconds"] for r in runs[s]) for s in systems}
    print(f"workflow: FrameLoader, CropAndBinImage, Sum2dData over 16 frames, {N_WORKERS} workers")
    print(f"{'system':<10}{'median s':>10}{'runs s':>36}{'correct':>10}")
    for s in systems:
        times = " ".join(f"{r['seconds']:.2f}" for r in runs[s])
        ok = sum(r["correct"] for r in runs[s])
        print(f"{s:<10}{medians[s]:>10.2f}{times:>36}{ok:>6}/{len(runs[s])}")
        for r in runs[s]:
            if not r["correct"]:
                print(f"    wrong: {r['why']}")
    for s in systems:
        if s != "pydidas" and "pydidas" in medians:
            print(f"pydidas / {s} median time: {medians['pydidas'] / medians[s]:.2f}x")
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_daemon(address: str, key: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, ZMQWORKERS_KEY=key, QT_API="pyside6", QT_QPA_PLATFORM="offscreen")
    cmd = [sys.executable, "-m", "zmqworkers", "worker", address]
    cmd += ["--processes", str(N_WORKERS), "--death-timeout", "600"]
    return subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _stop(daemon: subprocess.Popen[bytes]) -> None:
    daemon.terminate()
    try:
        daemon.wait(40)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait(10)


if __name__ == "__main__":
    sys.exit(main())
