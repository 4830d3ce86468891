"""Latency of a cancel and of a timeout, beside the undisturbed task rate.

On 2 local workers, in one cluster:

- the undisturbed rate: tiny tasks through ``map``;
- ``future.cancel()`` of a queued task (a round trip to the engine), and the
  same on ``concurrent.futures.ProcessPoolExecutor``, whose futures cancel
  without asking anyone (the peer);
- ``cancel([f], force=True)`` of a running task: until the call returns with
  the future cancelled, and until the replacement process has joined;
- a timeout: how long past its deadline a hung task's ``TaskTimeout`` arrives.

Prints medians of ``--repeat`` rounds.

    python benchmarks/control_latency.py [--repeat 5] [--tasks 20000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

from zmqworkers import Cluster, TaskTimeout

TIMEOUT = 0.5


def rate(c: Cluster, n: int) -> float:
    t0 = time.perf_counter()
    if sum(c.map(abs, range(n))) != n * (n - 1) // 2:
        raise AssertionError("results missing or wrong")
    return n / (time.perf_counter() - t0)


def queued_cancel(submit: object, n: int = 50) -> float:
    """Median seconds of ``future.cancel()`` on a task queued behind busy workers."""
    times = []
    futures = [submit(time.sleep, 0.3) for _ in range(4)]  # type: ignore[operator]
    time.sleep(0.2)
    for _ in range(n):
        f = submit(time.sleep, 0.3)  # type: ignore[operator]
        t0 = time.perf_counter()
        f.cancel()  # ProcessPoolExecutor may have moved it on already: False
        times.append(time.perf_counter() - t0)
    for f in futures:
        f.result()
    return statistics.median(times)


def forced_cancel(c: Cluster) -> tuple[float, float]:
    before = {w["pid"] for w in c.workers()}
    f = c.submit(time.sleep, 60)
    while not any(w["state"] == "busy" for w in c.workers()):
        time.sleep(0.01)
    t0 = time.perf_counter()
    c.cancel([f], force=True)
    if not f.cancelled():
        raise AssertionError("not cancelled")
    returned = time.perf_counter() - t0
    while len({w["pid"] for w in c.workers()} - before) < 1 or len(c.workers()) < 2:
        time.sleep(0.005)
    return returned, time.perf_counter() - t0


def timeout_late(c: Cluster) -> float:
    view = c.with_options(timeout=TIMEOUT)
    t0 = time.perf_counter()
    f = view.submit(time.sleep, 60)
    try:
        f.result(30)
    except TaskTimeout:
        return time.perf_counter() - t0 - TIMEOUT
    raise AssertionError("no timeout")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=20000)
    args = parser.parse_args()
    rows: dict[str, list[float]] = {}
    with Cluster(2) as c:
        c.wait_for_workers(2)
        rate(c, 2000)  # warm: the batch size is learned
        for _ in range(args.repeat):
            rows.setdefault("undisturbed rate (tasks/s)", []).append(rate(c, args.tasks))
            rows.setdefault("queued cancel (ms)", []).append(1000 * queued_cancel(c.submit))
            ret, joined = forced_cancel(c)
            rows.setdefault("forced cancel, call returns (ms)", []).append(1000 * ret)
            rows.setdefault("forced cancel, replacement joined (ms)", []).append(1000 * joined)
            rows.setdefault("timeout, past the deadline (ms)", []).append(1000 * timeout_late(c))
    with ProcessPoolExecutor(2) as pool:
        rows["ProcessPoolExecutor: queued cancel (ms)"] = [1000 * queued_cancel(pool.submit)]
    for name, values in rows.items():
        print(f"{name:55s} {statistics.median(values):10.3f}")


if __name__ == "__main__":
    main()
