"""Many worker processes on network-namespace hosts against 2 local workers: tiny tasks.

A controller in a namespace host of its own serves ``--hosts`` namespace
hosts (4 by default), each running one worker daemon with ``--processes``
children (32: 128 worker processes), over TCP on a private bridge. Beside
it, in this process, a ``Cluster(2)`` of local workers. Both take the same
``--tasks`` no-op tasks through ``imap_unordered``, in alternating rounds,
and the script prints the medians of the rates, their ratio, and the
controller's CPU time per task (all of its threads, from
``time.process_time`` around each round).

On a 2-core machine 128 worker processes share the cores with the
controller: the figure is what the controller keeps up with, not a speed-up.

Needs root and ``ip`` (iproute2), as tests/multihost does; elsewhere it
says why and exits.

    sudo python benchmarks/netns_scaling.py [--hosts 4] [--processes 32] [--tasks 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.multihost.netns import Network, why_unavailable  # noqa: E402

KEY = "b" * 64
PORT = 5555  # private to the controller's namespace

# The controller on its namespace host: waits for its workers, then runs a
# round for each "N" line on stdin and answers with one JSON line.
CONTROLLER = textwrap.dedent(
    """
    import json, sys, time
    from zmqworkers import Cluster

    address, want = sys.argv[1], int(sys.argv[2])
    with Cluster(0, bind=address, stop_timeout=30) as c:
        c.wait_for_workers(want, timeout=600)
        list(c.map(abs, range(20 * want)))  # every worker has the function
        print(json.dumps({"workers": len(c.workers())}), flush=True)
        for line in sys.stdin:
            n = int(line)
            cpu, t0 = time.process_time(), time.perf_counter()
            for _ in c.imap_unordered(abs, range(n)):
                pass
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu
            print(json.dumps({"rate": n / wall, "cpu": cpu / n}), flush=True)
    """
)


def local_round(c: Any, n: int) -> dict[str, float]:
    cpu, t0 = time.process_time(), time.perf_counter()
    for _ in c.imap_unordered(abs, range(n)):
        pass
    wall = time.perf_counter() - t0
    return {"rate": n / wall, "cpu": (time.process_time() - cpu) / n}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=4)
    p.add_argument("--processes", type=int, default=32, help="worker processes per host")
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    why = why_unavailable()
    if why:
        print(f"netns_scaling: skipped: {why}")
        return 0
    from zmqworkers import Cluster

    env = dict(os.environ, ZMQWORKERS_KEY=KEY)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: bytecode cached
    net = Network()
    try:
        ctl = net.add_host("ctl")
        address = f"tcp://{ctl.ip}:{PORT}"
        want = a.hosts * a.processes
        # Its rounds are asked for on stdin: started as Network.start does,
        # with a pipe there, and ended with the namespaces all the same.
        controller = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ctl.netns,
                sys.executable,
                "-c",
                CONTROLLER,
                address,
                str(want),
            ],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        net.procs.append(controller)  # type: ignore[arg-type]
        assert controller.stdin is not None and controller.stdout is not None
        for i in range(a.hosts):
            name = f"h{i + 1}"
            net.add_host(name)
            argv = [sys.executable, "-m", "zmqworkers", "worker", "--name", name]
            net.start(
                name,
                [*argv, "--processes", str(a.processes), address],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        t0 = time.monotonic()
        ready = json.loads(controller.stdout.readline() or "{}")
        if ready.get("workers") != want:
            raise RuntimeError(f"the controller did not get its {want} workers: {ready}")
        print(f"{want} workers on {a.hosts} hosts joined in {time.monotonic() - t0:.1f} s")
        remote: list[dict[str, float]] = []
        local: list[dict[str, float]] = []
        with Cluster(2) as c:
            c.wait_for_workers(2)
            list(c.map(abs, range(1000)))
            for _ in range(a.repeat):  # alternating rounds, same tasks
                local.append(local_round(c, a.tasks))
                controller.stdin.write(f"{a.tasks}\n".encode())
                controller.stdin.flush()
                remote.append(json.loads(controller.stdout.readline()))
        controller.stdin.close()  # the namespaces' end ends it and the daemons
    finally:
        net.close()

    def med(rounds: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    print(f"{a.tasks:,} no-op tasks, medians of {a.repeat} alternating rounds:")
    print(
        f"  {want} workers on {a.hosts} namespace hosts: {med(remote, 'rate'):,.0f} tasks/s, "
        f"controller CPU {med(remote, 'cpu') * 1e6:.1f} µs/task"
    )
    print(
        f"  2 local workers:                 {med(local, 'rate'):,.0f} tasks/s, "
        f"controller CPU {med(local, 'cpu') * 1e6:.1f} µs/task"
    )
    print(f"  ratio (namespace hosts / local): {med(remote, 'rate') / med(local, 'rate'):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
