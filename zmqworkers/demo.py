"""``zmqworkers demo``: a small job on local workers, with results and progress."""

from __future__ import annotations

import os
import time


def slow_square(x: int, delay: float) -> tuple[int, int]:
    time.sleep(delay)
    return x * x, os.getpid()


def run_demo(n_workers: int = 2, n_tasks: int = 20, delay: float = 0.05) -> int:
    from zmqworkers import Cluster

    t0 = time.perf_counter()
    with Cluster(n_workers) as cluster:
        print(f"controller at {cluster.address}, {n_workers} local workers")
        done = 0
        for task, (square, pid) in cluster.imap_unordered(slow_square, range(n_tasks), delay):
            done += 1
            bar = "#" * (20 * done // n_tasks)
            print(
                f"[{bar:<20}] {100 * done / n_tasks:5.1f} %  task {task:3d} -> {square:5d}"
                f"  (worker pid {pid})",
                flush=True,
            )
        ordered = list(cluster.map(pow, range(10), [2] * 10))
        print(f"map(pow, range(10), 2) = {ordered}")
    print(f"done: {n_tasks} tasks in {time.perf_counter() - t0:.2f} s")
    return 0
