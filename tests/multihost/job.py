"""A controller job for namespace hosts: run it as a script on the controller host.

``python job.py BIND KEY N_TASKS SECONDS N_WORKERS LOG``: waits for the
workers, runs ``N_TASKS`` tasks of ``SECONDS`` each, and writes one JSON
line per event to ``LOG`` (flushed at once, so the test can follow the
run): every delivery with the host that produced it, workers joining and
being lost, and at the end how often each task was delivered.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from typing import Any

from zmqworkers import Cluster


def work(x: int, seconds: float) -> tuple[int, str]:
    time.sleep(seconds)
    return x, os.environ.get("ZW_HOST", "?")


class LoggingCluster(Cluster):
    def __init__(self, log_path: str, *args: Any, **kwargs: Any) -> None:
        self.deliveries: Counter[int] = Counter()
        self._log = open(log_path, "a", buffering=1)  # noqa: SIM115
        self._log_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def write(self, **event: Any) -> None:
        with self._log_lock:
            self._log.write(json.dumps({"t": time.monotonic(), **event}) + "\n")

    def on_results(self, results: list[tuple[int, bool, Any]]) -> None:
        for tid, ok, value in results:
            self.deliveries[tid] += 1
            host = value[1] if ok else None
            self.write(event="result", tid=tid, ok=ok, host=host, error=None if ok else str(value))
        super().on_results(results)

    def on_event(self, name: str, data: Any) -> None:
        if name in ("worker_joined", "worker_lost", "worker_left"):
            self.write(event=name, data=data)
        super().on_event(name, data)


def main(argv: list[str]) -> int:
    bind, key, n_tasks, seconds, n_workers, log_path = argv
    c = LoggingCluster(log_path, 0, bind=bind, key=key, heartbeat_interval=0.5, heartbeat_misses=3)
    try:
        c.wait_for_workers(int(n_workers), timeout=60)
        c.write(event="start")
        futs = [c.submit(work, i, float(seconds)) for i in range(int(n_tasks))]
        errors = 0
        for f in futs:
            if f.exception(timeout=120) is not None:
                errors += 1
        c.write(event="end", deliveries=dict(c.deliveries), errors=errors)
    finally:
        c.shutdown(wait=False, cancel_futures=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
