"""A worker's resident memory and CPU use, sent with its heartbeats.

Read from ``/proc/self/statm`` where there is one (Linux); elsewhere the
peak resident size from ``getrusage`` stands in. CPU is the share of one
core this process used since the last sample (100 = one core busy), from
``os.times()``: all its threads, not the processes its tasks start.
"""

from __future__ import annotations

import os
import sys
import time

try:
    _PAGE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):  # not POSIX
    _PAGE = 4096


def rss_bytes() -> int:
    """This process's resident memory now (Linux ``/proc``; else the peak so far).

    0 where neither can be read: the memory limit then never triggers, and
    heartbeats carry no ``rss``.
    """
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return 0
    return peak if sys.platform == "darwin" else peak * 1024


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Usage:
    """Samples RSS and CPU; each sample's CPU covers the time since the one before."""

    def __init__(self) -> None:
        self._at = time.monotonic()
        self._cpu = _cpu_seconds()

    def sample(self) -> dict[str, float | int]:
        now, cpu = time.monotonic(), _cpu_seconds()
        wall = now - self._at
        share = 100.0 * (cpu - self._cpu) / wall if wall > 0 else 0.0
        self._at, self._cpu = now, cpu
        out: dict[str, float | int] = {"cpu": round(max(0.0, share), 1)}
        rss = rss_bytes()
        if rss:
            out["rss"] = rss
        return out
