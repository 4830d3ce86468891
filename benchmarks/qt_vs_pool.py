"""Many tiny tasks: WorkerController against multiprocessing.Pool, in one run.

20,000 tasks that each add one to an integer, on 2 workers: through
``WorkerController`` (results counted with ``QSignalSpy``, progress polled
without an event loop, as in the seed's examples) and through
``multiprocessing.Pool.imap_unordered(chunksize=1)``. Both clocks start once
the workers are up. Prints each time, the rate and the ratio.

The controller runs once per ``--prefetch`` value: 1 (the default, one task
waiting on each worker beyond the running one) and 64. ``Pool`` feeds its
workers' pipe without any bound, so the larger prefetch is the closer match.

    python benchmarks/qt_vs_pool.py [--tasks 20000] [--workers 2] [--prefetch 1,64]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def tiny(task: int) -> int:
    return task + 1


def run_controller(n: int, workers: int, prefetch: int) -> float:
    from qtpy import QtTest

    from zmqworkers import WorkerController

    wc = WorkerController(workers, tiny, prefetch=prefetch)
    spy = QtTest.QSignalSpy(wc.sig_results)
    wc.start()
    deadline = time.monotonic() + 60
    while len(wc.workers()) < workers:
        if time.monotonic() > deadline:
            raise TimeoutError("the workers did not join within 60 s")
        time.sleep(0.01)
    t0 = time.perf_counter()
    wc.add_tasks(range(n))
    wc.finalize_tasks()
    deadline = time.monotonic() + 600
    while wc.progress < 1:
        if time.monotonic() > deadline:
            raise TimeoutError("the run did not finish within 600 s")
        time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    if not wc.wait(60_000):
        raise TimeoutError("the controller did not stop")
    assert len(spy) == n, len(spy)
    assert sum(result for _, result in spy) == n * (n + 1) // 2
    return elapsed


def run_pool(n: int, workers: int) -> float:
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(abs, range(workers))  # workers up before timing, as above
        t0 = time.perf_counter()
        total = sum(pool.imap_unordered(tiny, range(n), chunksize=1))
        elapsed = time.perf_counter() - t0
    assert total == n * (n + 1) // 2
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=20_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--prefetch", default="1,64", help="comma-separated prefetch values")
    args = p.parse_args()
    n = args.tasks
    prefetches = [int(x) for x in args.prefetch.split(",")]
    t_wc = {pf: run_controller(n, args.workers, pf) for pf in prefetches}
    t_pool = run_pool(n, args.workers)
    print(f"{n} tiny tasks on {args.workers} workers ({os.cpu_count()} cores)")
    print(f"Pool.imap_unordered(chunksize=1):  {t_pool:7.3f} s  {n / t_pool:9.0f} tasks/s")
    for pf, t in t_wc.items():
        print(
            f"WorkerController, prefetch {pf:<4}: {t:7.3f} s  {n / t:9.0f} tasks/s"
            f"  ratio to Pool {t / t_pool:.2f}"
        )


if __name__ == "__main__":
    main()
