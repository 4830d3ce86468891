"""Recovery from a killed worker: run time with and without the kill.

40 tasks of 0.1 s on 2 local workers (ideal: 2.0 s). In the disturbed run
one worker is SIGKILLed 0.5 s in; its tasks go back to the queue and a new
worker replaces it. Prints the medians of ``--repeat`` runs of each and
their ratio (target: at most 1.2), and checks that every result arrived
exactly once. ``--peers`` also runs the same disturbed job on
``concurrent.futures.ProcessPoolExecutor`` and ``multiprocessing.Pool``
(waiting at most 10 s for them) and says what each delivered.

    python benchmarks/kill_recovery.py [--repeat 3] [--peers]
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


def peer_process_pool() -> str:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as ex:
        list(ex.map(int, range(2)))  # the workers are up
        victim = next(iter(ex._processes))  # no public way to name a worker
        futs = [ex.submit(nap, i) for i in range(N_TASKS)]
        threading.Timer(KILL_AFTER, os.kill, (victim, signal.SIGKILL)).start()
        ok = errors = 0
        for f in futs:
            try:
                f.result(10)
                ok += 1
            except Exception as exc:
                errors += 1
                kind = type(exc).__name__
        return f"{ok} results, {errors} errors ({kind})" if errors else f"{ok} results"


def peer_mp_pool() -> str:
    import multiprocessing

    pool = multiprocessing.Pool(2)
    try:
        victim = pool._pool[0].pid  # no public way to name a worker
        res = pool.map_async(nap, range(N_TASKS))
        threading.Timer(KILL_AFTER, os.kill, (victim, signal.SIGKILL)).start()
        try:
            return f"{len(res.get(10))} results"
        except multiprocessing.TimeoutError:
            return "no result after 10 s: hangs (the killed worker's task is never run again)"
    finally:
        pool.terminate()
        pool.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--peers", action="store_true", help="also run the peers, disturbed")
    args = ap.parse_args()
    calm = statistics.median(run(kill=False) for _ in range(args.repeat))
    killed = statistics.median(run(kill=True) for _ in range(args.repeat))
    print(f"{N_TASKS} tasks of {SECONDS} s on 2 local workers, medians of {args.repeat} runs")
    print(f"  undisturbed:                      {calm:6.2f} s")
    print(f"  one worker SIGKILLed {KILL_AFTER} s in:    {killed:6.2f} s")
    print(f"  ratio:                            {killed / calm:6.2f} x (target <= 1.2)")
    if args.peers:
        print("the same disturbed job on the peers:")
        print(f"  ProcessPoolExecutor:  {peer_process_pool()}")
        print(f"  multiprocessing.Pool: {peer_mp_pool()}")


if __name__ == "__main__":
    main()
