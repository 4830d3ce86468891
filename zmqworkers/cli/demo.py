"""``zmqworkers demo``: a small job on local workers, with results and progress."""

from __future__ import annotations

import os
import sys
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


def run_demo_gui(
    n_workers: int = 2,
    n_tasks: int = 20,
    delay: float = 0.25,
    screenshot: str | None = None,
    linger: float = 1.5,
) -> int:
    """The demo job in a window: a ``ClusterMonitor`` on a ``WorkerController``.

    The window closes ``linger`` seconds after the last result. With
    ``screenshot``, the window is saved to that PNG file when half the tasks
    are done.
    """
    if (
        sys.platform.startswith("linux")
        and not os.environ.get("QT_QPA_PLATFORM")
        and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    ):
        print(
            "zmqworkers demo --gui: no display (neither DISPLAY nor WAYLAND_DISPLAY is set); "
            "to run without one, set QT_QPA_PLATFORM=offscreen",
            file=sys.stderr,
        )
        return 2
    try:
        from zmqworkers.qt.gui_demo import show_job
    except ImportError as exc:
        print(f"zmqworkers demo --gui needs Qt (the [qt] extra): {exc}", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    run = show_job(
        slow_square,
        range(n_tasks),
        (delay,),
        n_workers=n_workers,
        title=f"zmqworkers demo: {n_tasks} tasks on {n_workers} workers",
        screenshot=screenshot,
        linger=linger,
        # Should the job hang: ten times its length, and at least a minute.
        bound=max(60.0, 10 * n_tasks * delay / max(1, n_workers)),
    )
    elapsed = time.perf_counter() - t0
    if run.timed_out:
        print("zmqworkers demo --gui: the job did not end in time", file=sys.stderr)
        return 1
    if run.saved:
        print(f"saved the monitor at 50 % to {screenshot}")
    pids = sorted({result[1] for result in run.results.values()})
    print(
        f"done: {len(run.results)} tasks in {elapsed:.2f} s, {len(run.errors)} errors, "
        f"on worker pids {pids}"
    )
    return 0 if len(run.results) == n_tasks and not run.errors else 1
