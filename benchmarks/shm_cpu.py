"""CPU time per array round trip: shared memory, the socket, and raw pyzmq over ipc.

    python benchmarks/shm_cpu.py                    # 64 x 8 MiB, medians of 3
    python benchmarks/shm_cpu.py --mib 1 --n 400 --repeat 5

Wall-clock rates on a shared machine move with everyone else's load; the
CPU a round trip costs does not, or much less. This counts it from
``/proc/<pid>/task/*/schedstat`` (nanoseconds, every thread: the engine,
ZeroMQ's I/O threads, heartbeats) of the controller and of each worker,
over the timed loop only, with the minor page faults and the segments the
controller wrote afresh. Each system runs in a fresh process, interleaved
with the others, as in ``run.py``:

  zmq_echo      Cluster(2), local workers through shared memory, f(x) = x
  zmq_compute   the same, f(x) = x + 1 (a new array: the worker writes it)
  zmq_socket    Cluster(2, shared_memory=False), f(x) = x
  raw_ipc       raw PUSH/PULL over ipc to 2 echo processes, pipelined

``raw_ipc / system`` above 1 means the system spends less CPU per round
trip than the raw ceiling.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import pipelined, raw_echo  # noqa: E402

SYSTEMS = ["zmq_echo", "zmq_compute", "zmq_socket", "raw_ipc"]


def echo(x: Any) -> Any:
    return x


def plus_one(x: Any) -> Any:
    return x + 1


def cpu_and_faults(pids: list[int]) -> tuple[float, int]:
    """Seconds of CPU (every thread) and minor faults of ``pids`` so far."""
    cpu_ns = faults = 0
    for pid in pids:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    cpu_ns += int(f.read().split()[0])
            with open(f"/proc/{pid}/stat") as f:
                faults += int(f.read().rsplit(")", 1)[1].split()[7])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return cpu_ns / 1e9, faults


def run_zmq(system: str, arrays: list[Any]) -> dict[str, float]:
    from zmqworkers import Cluster
    from zmqworkers.protocol import segments

    made = [0]
    free_segment = segments.SegmentLink._free_segment

    def counted(self: Any, size: int) -> Any:
        before = len(self._pool)
        seg = free_segment(self, size)
        made[0] += len(self._pool) > before
        return seg

    segments.SegmentLink._free_segment = counted  # type: ignore[method-assign]
    fn = plus_one if system == "zmq_compute" else echo
    with Cluster(2, shared_memory=system != "zmq_socket") as c:
        c.wait_for_workers(2)
        list(c.map(echo, range(100)))
        warm = [copy.copy(a) for _ in range(2) for a in arrays[:4]]
        for _ in c.imap_unordered(fn, warm):
            pass
        made0 = made[0]

        def loop() -> None:
            for _ in c.imap_unordered(fn, arrays):
                pass

        out = per_round_trip(loop, [w["pid"] for w in c.workers()], len(arrays))
    out["new_segments"] = made[0] - made0
    return out


def run_raw(arrays: list[Any]) -> dict[str, float]:
    with raw_echo("raw_ipc") as (push, pull, pids):
        for a in arrays[:8]:  # the same warm-up as the others
            push.send(a, copy=False)
        for _ in arrays[:8]:
            pull.recv(copy=False)
        return per_round_trip(lambda: pipelined(push, pull, arrays), pids, len(arrays))


def per_round_trip(loop: Any, workers: list[int], n: int) -> dict[str, float]:
    """Runs ``loop()`` (``n`` round trips): its wall time, and CPU and faults per trip."""
    me = os.getpid()
    ctl0, cf0 = cpu_and_faults([me])
    wk0, wf0 = cpu_and_faults(workers)
    t0 = time.perf_counter()
    loop()
    wall = time.perf_counter() - t0
    ctl1, cf1 = cpu_and_faults([me])
    wk1, wf1 = cpu_and_faults(workers)
    return {
        "wall": wall,
        "controller_ms": 1e3 * (ctl1 - ctl0) / n,
        "workers_ms": 1e3 * (wk1 - wk0) / n,
        "faults": (cf1 - cf0 + wf1 - wf0) / n,
        "controller_faults": (cf1 - cf0) / n,
        "worker_faults": (wf1 - wf0) / n,
        "new_segments": 0,
    }


def one(system: str, n: int, mib: float) -> dict[str, float]:
    import numpy as np

    arrays = [np.full(int(mib * (1 << 20)) // 8, float(i)) for i in range(n)]
    return run_raw(arrays) if system == "raw_ipc" else run_zmq(system, arrays)


def interleaved(script: str, systems: list[str], a: argparse.Namespace) -> dict[str, list[Any]]:
    """``a.repeat`` rounds of ``script --one SYSTEM``, each system once a round,
    each in a fresh process: what each printed, by system."""
    runs: dict[str, list[Any]] = {s: [] for s in systems}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for _ in range(a.repeat):
        for system in systems:
            cmd = [sys.executable, script, "--one", system, "--n", str(a.n), "--mib", str(a.mib)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
            if out.returncode:
                raise SystemExit(f"{system} failed: {out.stderr.strip().splitlines()[-1:]}")
            runs[system].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return runs


def medians(runs: dict[str, list[Any]], cpu: dict[str, float]) -> Iterator[tuple[str, Any]]:
    """Each system's medians, key by key; its CPU per round trip goes into ``cpu``."""
    for system, rs in runs.items():
        cpu[system] = statistics.median(r["controller_ms"] + r["workers_ms"] for r in rs)
        yield system, {k: statistics.median(r[k] for r in rs) for k in rs[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--mib", type=float, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--one", metavar="SYSTEM")
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.n, a.mib)))
        return
    runs = interleaved(__file__, a.systems.split(","), a)
    gb = 2 * a.mib * (1 << 20) / 1e9  # per round trip, both ways
    print(f"{a.n} round trips of {a.mib:g} MiB on 2 workers, medians of {a.repeat}")
    print("system        GB/s   CPU ms/round trip (controller + workers)  faults  segments made")
    cpu: dict[str, float] = {}
    for system, med in medians(runs, cpu):
        print(
            f"{system:12s} {a.n * gb / med['wall']:6.2f}   {cpu[system]:6.3f} "
            f"({med['controller_ms']:.3f} + {med['workers_ms']:.3f})"
            f"{med['faults']:22.0f}  {med['new_segments']:8.0f}"
        )
    if "raw_ipc" in cpu:
        print("\nCPU per round trip, raw_ipc / system (above 1: less CPU than raw pyzmq)")
        for system, value in cpu.items():
            if system != "raw_ipc":
                print(f"  {system:12s} {cpu['raw_ipc'] / value:6.2f}x")


if __name__ == "__main__":
    main()
