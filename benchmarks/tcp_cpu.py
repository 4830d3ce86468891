"""CPU time per array round trip over loopback TCP: daemons against raw pyzmq.

    python benchmarks/tcp_cpu.py                    # 64 x 8 MiB, medians of 3
    python benchmarks/tcp_cpu.py --mib 1 --n 400 --repeat 5

The companion of ``shm_cpu.py`` for scenario b's TCP pair: wall-clock rates
on a shared machine move with everyone else's load, the CPU a round trip
costs much less. Counted from ``/proc/<pid>/task/*/schedstat`` (every
thread) over the timed loop only, a second pass over the arrays after an
untimed first (a steady state), with the minor page faults:

  zmq_daemons   Cluster(0, key=...) and two ``zmqworkers worker`` daemons
                dialling it on 127.0.0.1, f(x) = x (as ``run.py`` b)
  raw           raw PUSH/PULL over loopback TCP to 2 echo processes, pipelined

``raw / zmq_daemons`` above 1 means the daemons spend less CPU per round
trip than the raw ceiling.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import _zmq_cluster, pipelined, raw_echo  # noqa: E402
from shm_cpu import interleaved, medians, per_round_trip  # noqa: E402

SYSTEMS = ["zmq_daemons", "raw"]


def echo(x: Any) -> Any:
    return x


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (a daemon's worker processes too)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except FileNotFoundError:
                continue
            out += kids
            todo += kids
    return out


def run_daemons(arrays: list[Any]) -> dict[str, float]:
    with _zmq_cluster("zmq_daemons") as c:
        c.wait_for_workers(2)
        list(c.map(echo, range(100)))
        for _ in c.imap_unordered(echo, [copy.copy(a) for _ in range(2) for a in arrays[:4]]):
            pass

        def loop() -> None:
            for _ in c.imap_unordered(echo, arrays):
                pass

        loop()  # steady state: heaps and socket buffers grown
        return per_round_trip(loop, descendants(os.getpid()), len(arrays))


def run_raw(arrays: list[Any]) -> dict[str, float]:
    with raw_echo("raw") as (push, pull, pids):
        pipelined(push, pull, arrays)  # the same warm-up as the daemons'
        return per_round_trip(lambda: pipelined(push, pull, arrays), pids, len(arrays))


def one(system: str, n: int, mib: float) -> dict[str, float]:
    import numpy as np

    arrays = [np.full(int(mib * (1 << 20)) // 8, float(i)) for i in range(n)]
    return run_raw(arrays) if system == "raw" else run_daemons(arrays)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--mib", type=float, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--one", metavar="SYSTEM", choices=SYSTEMS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.n, a.mib)))
        return
    runs = interleaved(__file__, SYSTEMS, a)
    gb = 2 * a.mib * (1 << 20) / 1e9  # per round trip, both ways
    print(f"{a.n} round trips of {a.mib:g} MiB, 2 workers, loopback TCP, medians of {a.repeat}")
    print("system         GB/s   CPU ms/round trip (controller + workers)   faults per round trip")
    cpu: dict[str, float] = {}
    for system, med in medians(runs, cpu):
        print(
            f"{system:12s} {a.n * gb / med['wall']:6.2f}   {cpu[system]:6.3f} "
            f"({med['controller_ms']:.3f} + {med['workers_ms']:.3f})"
            f"{med['controller_faults'] + med['worker_faults']:18.0f} "
            f"({med['controller_faults']:.0f} + {med['worker_faults']:.0f})"
        )
    print(f"\nCPU per round trip, raw / zmq_daemons: {cpu['raw'] / cpu['zmq_daemons']:.2f}x")


if __name__ == "__main__":
    main()
