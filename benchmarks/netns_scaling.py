"""Many worker processes on network-namespace hosts against 2 local workers: tiny tasks.

A controller in a namespace host of its own serves ``--hosts`` namespace
hosts (4 by default), each running one worker daemon with ``--processes``
children (32: 128 worker processes), over TCP on a private bridge. Beside
it, in this process, a ``Cluster(2)`` of local workers. Both take the same
``--tasks`` no-op tasks through ``imap_unordered``, in alternating rounds,
and the script prints the medians of the rates, their ratio, the
controller's CPU time per task (all of its threads, from
``time.process_time`` around each round), the workers' CPU time per task
(every thread of every worker process, and of the daemons, from
``/proc``), their context switches per task, and the messages per task
each way (TASKS out, RESULTS and heartbeats in).

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
# round for each "N" line on stdin (as the local one, local_round) and
# answers with one JSON line. Run from the checkout's root, which is on its path.
CONTROLLER = textwrap.dedent(
    """
    import json, sys
    from zmqworkers import Cluster
    from benchmarks.netns_scaling import local_round

    address, want = sys.argv[1], int(sys.argv[2])
    with Cluster(0, bind=address, stop_timeout=30) as c:
        c.wait_for_workers(want, timeout=600)
        list(c.map(abs, range(20 * want)))  # every worker has the function
        print(json.dumps({"workers": len(c.workers())}), flush=True)
        for line in sys.stdin:
            print(json.dumps(local_round(c, int(line))), flush=True)
    """
)


def usage(pids: list[int]) -> tuple[float, int]:
    """CPU seconds and context switches of ``pids`` so far, summed over their threads.

    From each thread's ``schedstat`` (nanoseconds run, times scheduled in):
    exact, where the tick-sampled user and system times of ``stat`` misjudge
    threads that run for less than a tick between sleeps.
    """
    cpu, switches = 0, 0
    for pid in pids:
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                ran, _, slices = (task / "schedstat").read_text().split()
                cpu += int(ran)
                switches += int(slices)
        except OSError:
            continue  # ended meanwhile
    return cpu / 1e9, switches


def measured(round_: Any, n: int, pids: list[int]) -> dict[str, float]:
    """Run ``round_()``; add the workers' CPU and context switches per task."""
    cpu0, sw0 = usage(pids)
    r: dict[str, float] = round_()
    cpu1, sw1 = usage(pids)
    return {**r, "wcpu": (cpu1 - cpu0) / n, "switches": (sw1 - sw0) / n}


def local_round(c: Any, n: int) -> dict[str, float]:
    s0 = c.status()
    cpu, t0 = time.process_time(), time.perf_counter()
    for _ in c.imap_unordered(abs, range(n)):
        pass
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu
    s1 = c.status()
    out = s1["stats"]["messages_sent"] - s0["stats"]["messages_sent"]
    back = s1["messages_received"] - s0["messages_received"]
    return {"rate": n / wall, "cpu": cpu / n, "out": out / n, "in": back / n}


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
            # `python -c` and `-m` put the working folder first on sys.path:
            # from this checkout's root, they run this checkout.
            cwd=ROOT,
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
                cwd=ROOT,
            )
        t0 = time.monotonic()
        ready = json.loads(controller.stdout.readline() or "{}")
        if ready.get("workers") != want:
            raise RuntimeError(f"the controller did not get its {want} workers: {ready}")
        print(f"{want} workers on {a.hosts} hosts joined in {time.monotonic() - t0:.1f} s")
        remote: list[dict[str, float]] = []
        local: list[dict[str, float]] = []
        # Every process on the worker hosts: daemons and their workers.
        remote_pids = [pid for i in range(a.hosts) for pid in net.pids(f"h{i + 1}")]

        def remote_round() -> dict[str, float]:
            assert controller.stdin is not None and controller.stdout is not None
            controller.stdin.write(f"{a.tasks}\n".encode())
            controller.stdin.flush()
            return json.loads(controller.stdout.readline())  # type: ignore[no-any-return]

        with Cluster(2) as c:
            c.wait_for_workers(2)
            list(c.map(abs, range(1000)))
            local_pids = [w["pid"] for w in c.workers()]
            for _ in range(a.repeat):  # alternating rounds, same tasks
                local.append(measured(lambda: local_round(c, a.tasks), a.tasks, local_pids))
                remote.append(measured(remote_round, a.tasks, remote_pids))
        controller.stdin.close()  # the namespaces' end ends it and the daemons
    finally:
        net.close()

    def med(rounds: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    def line(rounds: list[dict[str, float]]) -> str:
        return (
            f"{med(rounds, 'rate'):,.0f} tasks/s, controller CPU {med(rounds, 'cpu') * 1e6:.1f} "
            f"µs/task, workers' CPU {med(rounds, 'wcpu') * 1e6:.1f} µs/task, "
            f"{med(rounds, 'switches') * 1000:.0f} context switches, "
            f"{med(rounds, 'out') * 1000:.1f} messages out and {med(rounds, 'in') * 1000:.1f} in "
            "per 1,000 tasks"
        )

    print(f"{a.tasks:,} no-op tasks, medians of {a.repeat} alternating rounds:")
    print(f"  {want} workers on {a.hosts} namespace hosts: {line(remote)}")
    print(f"  2 local workers:                 {line(local)}")
    print(
        "  rates of the rounds:",
        [round(r["rate"]) for r in remote],
        [round(r["rate"]) for r in local],
    )
    print(f"  ratio (namespace hosts / local): {med(remote, 'rate') / med(local, 'rate'):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
