"""Where the controller's memory goes while tasks stream through.

    python benchmarks/soak_memory.py --n 10000000 --every 1000000
    python benchmarks/soak_memory.py --n 2000000 --every 250000 --trace

Streams ``n`` no-op tasks through ``Cluster(2).imap_unordered`` and samples,
every ``every`` tasks: RSS, live gc objects, the Python heap's block count,
the sizes of the controller's per-task tables and, with ``--trace``, the
Python heap as tracemalloc sees it (about 20 times slower). With ``--trace``
the top growth by traceback between the first sample after 20 % and the last
one before the end is printed to stderr. Output is JSON lines on stdout; the
last line is taken after the stream has drained.

RSS steps by ~10 MB either way as glibc's adaptive mmap threshold moves large
freed blocks between mmap and its heap; ``MALLOC_MMAP_THRESHOLD_=131072``
pins it, and RSS is then flat to a fraction of a MB when nothing is kept.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from typing import Any

import psutil

from zmqworkers import Cluster


def noop(x: Any) -> Any:
    return x


def sizes(c: Cluster) -> dict[str, int]:
    eng = c._engine

    def read() -> dict[str, int]:
        s = eng.sched
        return {
            "sched_tasks": len(s.tasks),
            "sched_pending": len(s.pending),
            "spec_refs": len(s.spec_refs),
            "departed": len(s.departed),
            "specs": len(eng._specs),
            "spec_cost": len(eng._spec_cost),
            "guard": len(eng._guard._last),
            "sessions": len(eng._sessions),
            "retired": len(eng._retired),
            "lost_ids": len(eng._lost_ids),
            "dropped": sum(eng.dropped.values()),
            "stats_keys": len(eng.stats),
            "in_flight": sum(len(w.in_flight) for w in s.workers.values()),
        }

    out = eng.call(read)
    st = c._streams
    out.update(
        futures=len(c._futures),
        stream_starts=len(st._starts),
        stream_by_start=len(st._by_start),
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=10_000_000)
    p.add_argument("--every", type=int, default=1_000_000)
    p.add_argument("--trace", action="store_true")
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args()
    proc = psutil.Process()
    if a.trace:
        tracemalloc.start(a.frames)
    snaps: list[tuple[int, Any]] = []
    t0 = time.perf_counter()
    with Cluster(2) as c:
        c.wait_for_workers(2)
        for _ in c.imap_unordered(noop, range(1000)):
            pass
        gen = c.imap_unordered(noop, range(a.n))
        for i, _ in enumerate(gen, 1):
            if i % a.every == 0 or i == a.n:
                row: dict[str, Any] = {
                    "done": i,
                    "t": round(time.perf_counter() - t0, 1),
                    "rss_mb": round(proc.memory_info().rss / 1e6, 2),
                    "gc_objects": len(gc.get_objects()),
                    "allocated_blocks": sys.getallocatedblocks(),
                }
                if a.trace:
                    cur, peak = tracemalloc.get_traced_memory()
                    row["traced_mb"] = round(cur / 1e6, 3)
                    row["traced_peak_mb"] = round(peak / 1e6, 3)
                    # The last sample is taken after the stream has drained.
                    if a.n // 5 <= i < a.n:
                        snaps[1:] = [(i, tracemalloc.take_snapshot())]
                row.update(sizes(c))
                print(json.dumps(row), flush=True)
        stream_table = {"starts": len(c._streams._starts)}
    print(json.dumps({"after_the_stream": stream_table}), flush=True)
    if a.trace and len(snaps) >= 2:
        (i0, s0), (i1, s1) = snaps[0], snaps[-1]
        filt = [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        ]
        s0, s1 = s0.filter_traces(filt), s1.filter_traces(filt)
        print(f"# top growth by traceback, {i0} -> {i1} tasks", file=sys.stderr)
        for stat in s1.compare_to(s0, "traceback")[: a.top]:
            print(
                f"{stat.size_diff / 1e3:+10.1f} kB {stat.count_diff:+8d} blocks"
                f" (now {stat.size / 1e3:.1f} kB)",
                file=sys.stderr,
            )
            for line in stat.traceback.format()[-2 * a.frames :]:
                print("    " + line, file=sys.stderr)


if __name__ == "__main__":
    main()
