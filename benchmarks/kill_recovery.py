"""Recovery from a killed worker: run time with and without the kill.

40 tasks of 0.1 s on 2 local workers (ideal: 2.0 s). In the disturbed run
one worker is SIGKILLed 0.5 s in; its tasks go back to the queue and a new
worker replaces it. Prints the medians of ``--repeat`` runs of each and
their ratio (target: at most 1.2), and checks that every result arrived
exactly once.

    python benchmarks/kill_recovery.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import threading
import time
from collections import Counter
from typing import Any

from zmqworkers import Cluster

N_TASKS = 40
SECONDS = 0.1
KILL_AFTER = 0.5


def nap(x: int) -> int:
    time.sleep(SECONDS)
    return x


class CountingCluster(Cluster):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.deliveries: Counter[int] = Counter()
        super().__init__(*args, **kwargs)

    def on_results(self, results: list[tuple[int, bool, Any]]) -> None:
        self.deliveries.update(tid for tid, _, _ in results)
        super().on_results(results)


def run(kill: bool) -> float:
    with CountingCluster(2) as c:
        c.wait_for_workers(2)
        victim = c.workers()[0]["pid"]
        killer = threading.Timer(KILL_AFTER, os.kill, (victim, signal.SIGKILL))
        t0 = time.perf_counter()
        if kill:
            killer.start()
        out = list(c.map(nap, range(N_TASKS)))
        elapsed = time.perf_counter() - t0
        killer.cancel()
        if out != list(range(N_TASKS)):
            raise AssertionError("results missing or wrong")
        if len(c.deliveries) != N_TASKS or set(c.deliveries.values()) != {1}:
            raise AssertionError(f"not delivered exactly once: {c.deliveries}")
        if kill and c.counters().get("workers_lost", 0) != 1:
            raise AssertionError("the worker was not killed mid-run")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    calm = statistics.median(run(kill=False) for _ in range(args.repeat))
    killed = statistics.median(run(kill=True) for _ in range(args.repeat))
    print(f"{N_TASKS} tasks of {SECONDS} s on 2 local workers, medians of {args.repeat} runs")
    print(f"  undisturbed:                      {calm:6.2f} s")
    print(f"  one worker SIGKILLed {KILL_AFTER} s in:    {killed:6.2f} s")
    print(f"  ratio:                            {killed / calm:6.2f} x (target <= 1.2)")


if __name__ == "__main__":
    main()
