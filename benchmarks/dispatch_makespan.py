"""Demand-driven dispatch: makespan of uneven tasks against the ideal list schedule.

200 tasks on 2 workers, every tenth sleeps 0.2 s and the rest 0.01 s. The
ideal list schedule (each task, in order, to the worker free first) is about
2.9 s. Runs zmqworkers and multiprocessing.Pool side by side, medians of
``--repeat`` runs, and prints each makespan as a ratio of the ideal.

    python benchmarks/dispatch_makespan.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import heapq
import multiprocessing
import statistics
import time


def task(i: int) -> int:
    time.sleep(0.2 if i % 10 == 0 else 0.01)
    return i


def durations(n: int) -> list[float]:
    return [0.2 if i % 10 == 0 else 0.01 for i in range(n)]


def ideal_list_schedule(ds: list[float], workers: int) -> float:
    free = [0.0] * workers
    for d in ds:
        heapq.heappush(free, heapq.heappop(free) + d)
    return max(free)


def run_zmqworkers(n: int, workers: int) -> float:
    from zmqworkers import Cluster

    with Cluster(workers) as c:
        c.wait_for_workers(workers)
        t0 = time.perf_counter()
        got = sorted(t for t, _ in c.imap_unordered(task, range(n)))
        elapsed = time.perf_counter() - t0
    assert got == list(range(n))
    return elapsed


def run_pool(n: int, workers: int) -> float:
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(abs, range(workers))  # workers up before timing, as above
        t0 = time.perf_counter()
        got = sorted(pool.imap_unordered(task, range(n), chunksize=1))
        elapsed = time.perf_counter() - t0
    assert got == list(range(n))
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    ideal = ideal_list_schedule(durations(a.tasks), a.workers)
    print(f"ideal list schedule: {ideal:.3f} s ({a.tasks} tasks, {a.workers} workers)")
    for name, fn in (("zmqworkers", run_zmqworkers), ("multiprocessing.Pool", run_pool)):
        runs = [fn(a.tasks, a.workers) for _ in range(a.repeat)]
        med = statistics.median(runs)
        print(f"{name:22s} median {med:.3f} s  = {med / ideal:.3f}x ideal  (runs {runs})")


if __name__ == "__main__":
    main()
