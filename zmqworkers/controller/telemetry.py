"""What the dashboard shows that the scheduler does not keep. Pure code.

The engine thread feeds it (deliveries, the call times workers report,
bytes in) with the time it read; :meth:`Telemetry.snapshot` returns plain
data for the engine's ``status`` command. Everything here is bounded: a
fixed set of histogram buckets, the latest failures, a throughput series of
at most ``THROUGHPUT_POINTS`` one-second samples.
"""

from __future__ import annotations

import bisect
import collections
from typing import Any

from zmqworkers.errors import RemoteError

# Task run time buckets (seconds), upper bounds; +Inf is implied.
RUN_TIME_BUCKETS = (0.0001, 0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0)
MAX_FAILURES = 20
THROUGHPUT_POINTS = 300  # five minutes of one-second samples
MAX_TRACEBACK_CHARS = 8000


class Telemetry:
    """Counts, a run-time histogram, the latest failures and a throughput series."""

    def __init__(self) -> None:
        self.done = 0
        self.failed = 0
        self.bytes_received = 0
        self.messages_received = 0
        self.run_time_counts = [0] * (len(RUN_TIME_BUCKETS) + 1)
        self.run_time_sum = 0.0
        self.failures: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_FAILURES)
        # (monotonic time, tasks delivered so far), one a second at most.
        self.throughput: collections.deque[tuple[float, int]] = collections.deque(
            maxlen=THROUGHPUT_POINTS
        )

    def delivered(self, out: list[tuple[int, bool, Any]], now: float) -> None:
        for tid, ok, value in out:
            if ok:
                self.done += 1
                continue
            self.failed += 1
            self.failures.append(_failure(tid, value, now))
        self.tick(now)

    def tick(self, now: float) -> None:
        """Add a throughput sample if the last is a second old."""
        if not self.throughput or now - self.throughput[-1][0] >= 1.0:
            self.throughput.append((now, self.done + self.failed))

    def received(self, nbytes: int) -> None:
        self.messages_received += 1
        self.bytes_received += nbytes

    def ran(self, header: Any) -> None:
        """A RESULTS header's call time: ``busy`` seconds over ``n`` tasks."""
        if not isinstance(header, dict):
            return
        busy, n = header.get("busy"), header.get("n")
        if not (isinstance(busy, float) and isinstance(n, int) and n > 0 and busy >= 0):
            return
        # A batch reports only its total: each of its tasks counts the mean.
        per_task = busy / n
        self.run_time_counts[bisect.bisect_left(RUN_TIME_BUCKETS, per_task)] += n
        self.run_time_sum += busy

    def snapshot(self, now: float) -> dict[str, Any]:
        cumulative, total = [], 0
        for count in self.run_time_counts:
            total += count
            cumulative.append(total)
        return {
            "done": self.done,
            "failed": self.failed,
            "bytes_received": self.bytes_received,
            "messages_received": self.messages_received,
            "run_time": {
                # Upper bounds; the last bucket has none (JSON has no infinity).
                "buckets": [*RUN_TIME_BUCKETS, "+Inf"],
                "cumulative": cumulative,
                "sum": self.run_time_sum,
                "count": total,
            },
            "failures": [
                {**{k: v for k, v in f.items() if k != "at"}, "ago": round(now - f["at"], 1)}
                for f in self.failures
            ],
            # Seconds before now, and tasks delivered by then.
            "throughput": [(round(t - now, 3), n) for t, n in self.throughput],
        }


def _failure(tid: int, err: Any, now: float) -> dict[str, Any]:
    if isinstance(err, RemoteError):
        return {
            "task": tid,
            "type": err.type_name,
            "message": err.remote_message[:500],
            "worker": err.worker,
            "host": err.host,
            "traceback": err.remote_traceback[-MAX_TRACEBACK_CHARS:],
            "at": now,
        }
    return {
        "task": tid,
        "type": type(err).__name__,
        "message": str(err)[:500],
        "worker": getattr(err, "worker", ""),
        "host": getattr(err, "host", ""),
        "traceback": "",
        "at": now,
    }
