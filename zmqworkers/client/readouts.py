"""What a ``Cluster`` tells of its cluster: snapshots, the dashboard link, a notebook view.

Each reads the engine through one of its commands, which answer with a
snapshot; none changes anything.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from zmqworkers.controller.engine import Engine


class ClusterReadouts:
    """The read-only side of :class:`~zmqworkers.client.cluster.Cluster`."""

    _engine: Engine
    _shutdown: bool

    @property
    def dashboard_url(self) -> str | None:
        """The dashboard's link (with its token off loopback), or None without one."""
        return self._engine.dashboard_url

    def _repr_html_(self) -> str:
        """Workers, queue and the dashboard link, for a notebook."""
        from zmqworkers.client.progress import status_html

        if self._shutdown:
            return status_html(None, None)
        return status_html(self._engine.status(), self.dashboard_url)

    def status(self) -> dict[str, Any]:
        """What the dashboard shows, as one snapshot (see docs/monitoring.md)."""
        return self._engine.status()

    def workers(self) -> list[dict[str, Any]]:
        """Snapshot of the connected workers (host, pid, state, tasks done, RSS, CPU)."""
        return self._engine.workers()

    def counters(self) -> dict[str, Any]:
        """Tasks queued, running, delivered, failed; drops by reason."""
        return self._engine.counters()

    def excuse_workers(self, prefix: str, *, lost: Iterable[str] | None = None) -> int:
        """Workers named ``prefix...`` are ended from outside (their batch job
        ended): their tasks count no attempt. Losses already recorded are taken
        back for the workers in ``lost`` only (None: all of the prefix), never
        a result that never arrived. Returns the attempts taken back."""
        return self._engine.excuse_workers(prefix, lost=lost)

    def wait_for_workers(self, n: int, timeout: float = 30.0) -> None:
        """Block until at least ``n`` workers have joined."""
        deadline = time.monotonic() + timeout
        while len(self.workers()) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {n} workers joined within {timeout} s")
            time.sleep(0.02)
