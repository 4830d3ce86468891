"""``/metrics``: the engine's snapshot as Prometheus text, through prometheus_client.

Each scrape builds the families afresh from one snapshot (a custom
collector on a registry of its own), so nothing is registered globally and
two controllers in one process never clash.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST
PREFIX = "zmqworkers"
WORKER_STATES = ("idle", "busy", "draining")


class _SnapshotCollector(Collector):
    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        s = self.status
        stats: dict[str, int] = s.get("stats", {})
        counters = {
            "tasks_submitted": ("Tasks submitted", stats.get("submitted", 0)),
            "tasks_done": ("Tasks that returned a result", s.get("done", 0)),
            "tasks_failed": (
                "Tasks that ended in an error (raised, lost, timed out, too large)",
                s.get("failed", 0),
            ),
            "tasks_retried": (
                "Tasks queued again after their worker was lost holding them",
                s.get("retried", 0),
            ),
            "tasks_cancelled": (
                "Tasks cancelled: queued, prefetched, or running and interrupted with force",
                stats.get("cancelled", 0),
            ),
            "tasks_interrupted": (
                "Calls interrupted by replacing their worker process (forced cancel, timeout)",
                stats.get("interrupted", 0),
            ),
            "tasks_timed_out": ("Tasks that ran past their timeout", stats.get("timed_out", 0)),
            "bytes_sent": ("Bytes sent to workers", stats.get("bytes_sent", 0)),
            "bytes_received": ("Bytes received from workers", s.get("bytes_received", 0)),
            "messages_sent": ("Messages sent to workers", stats.get("messages_sent", 0)),
            "messages_received": (
                "Messages received from workers",
                s.get("messages_received", 0),
            ),
            "workers_lost": ("Workers lost (died or went silent)", stats.get("workers_lost", 0)),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)
        dropped = CounterMetricFamily(
            f"{PREFIX}_messages_dropped", "Messages dropped, by reason", labels=["reason"]
        )
        for reason, n in sorted(s.get("dropped", {}).items()):
            dropped.add_metric([reason], n)
        yield dropped
        yield GaugeMetricFamily(f"{PREFIX}_tasks_queued", "Tasks waiting", value=s.get("queued", 0))
        yield GaugeMetricFamily(
            f"{PREFIX}_tasks_in_flight",
            "Tasks on workers, running or prefetched",
            value=s.get("in_flight", 0),
        )
        by_state = Counter(w.get("state", "idle") for w in s.get("workers", []))
        workers = GaugeMetricFamily(
            f"{PREFIX}_workers", "Connected workers, by state", labels=["state"]
        )
        for state in sorted(set(WORKER_STATES) | set(by_state)):
            workers.add_metric([state], by_state.get(state, 0))
        yield workers
        rt = s.get("run_time")
        if rt:
            buckets = [
                (_bound(b), float(c)) for b, c in zip(rt["buckets"], rt["cumulative"], strict=True)
            ]
            yield HistogramMetricFamily(
                f"{PREFIX}_task_run_seconds",
                "Time a task's call took on its worker",
                buckets=buckets,
                sum_value=rt["sum"],
            )


def _bound(b: float | str) -> str:
    return "+Inf" if b in ("+Inf", float("inf")) else repr(float(b))


def render_metrics(status: dict[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(status))
    return generate_latest(registry)
