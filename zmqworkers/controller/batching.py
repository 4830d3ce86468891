"""Batching: the function specs the engine holds, and how many tasks share a message.

Tiny tasks share messages; how many is learned per function from the
results' ``busy`` time and payload size (see :class:`Batcher`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from zmqworkers.controller.options import EngineOptions
from zmqworkers.protocol.serialize import dumps

# The engine keeps at most about this many specs no undelivered task needs.
MAX_IDLE_SPECS = 64


@dataclass(frozen=True)
class Spec:
    """A function spec, serialized once in the caller's thread."""

    id: str
    frames: tuple[Any, ...]


def make_spec(
    convention: str, func: Callable[..., Any], args: tuple[Any, ...] = (), kwargs: Any = None
) -> Spec:
    frames = dumps((convention, func, tuple(args), dict(kwargs or {})), by_value=True)
    digest = hashlib.sha256()
    for f in frames:
        digest.update(memoryview(f))
    return Spec(digest.hexdigest()[:32], tuple(frames))


class Batcher:
    """Function specs by id, with each one's measured cost per task."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.specs: dict[str, Spec] = {}
        # Per function spec: (seconds per task or None, payload bytes per task).
        self._cost: dict[str, tuple[float | None, float]] = {}

    def add(self, spec: Spec, refs: Mapping[str, int]) -> None:
        """Hold ``spec``; ``refs`` counts the undelivered tasks of each spec."""
        if len(self.specs) > MAX_IDLE_SPECS:
            # Specs no undelivered task needs are dropped (a face that sends
            # more tasks of one later hands its spec in again with them).
            for sid in [s for s in self.specs if refs.get(s, 0) == 0]:
                del self.specs[sid]
                self._cost.pop(sid, None)
        self.specs[spec.id] = spec

    def fit(self, spec_id: str, size: float, n: int) -> int:
        """How many of ``n`` tasks of ``size`` bytes each one message may carry."""
        t, known = self._cost.get(spec_id, (None, 0.0))
        if size <= known:
            return n
        self._cost[spec_id] = (t, size)
        # Larger payloads than this function had so far: send what fits one
        # message, the rest go to whoever asks next.
        return min(n, max(1, int(self.options.batch_bytes / size)))

    def tune(self, spec_id: str, header: dict[str, Any], nbytes: int) -> None:
        """Learn a function's time and payload per task from a result batch."""
        busy, n = header.get("busy"), header.get("n")
        if not (isinstance(busy, float) and isinstance(n, int) and n > 0):
            return
        per_task = busy / n
        old_t, old_bytes = self._cost.get(spec_id, (None, 0.0))
        # Smoothed, but one slow batch counts at once: holding a slow task
        # behind others costs more than sending tiny ones alone.
        t = per_task if old_t is None or per_task > old_t else 0.7 * old_t + 0.3 * per_task
        self._cost[spec_id] = (t, max(old_bytes, nbytes / n))

    def batch_for(self, spec_id: str) -> int:
        """Tasks per dispatch unit for this function: 1 until it is measured.

        Measured per function, not per worker: a slow function that follows
        a fast one must not be sent in the fast one's batches.
        """
        t, size = self._cost.get(spec_id, (None, 0.0))
        opts = self.options
        if t is None or opts.batch_target <= 0:
            return 1
        # Large payloads are not batched either: one message of many arrays
        # would keep the other workers waiting while it crosses the wire.
        return max(
            1,
            min(
                opts.max_batch,
                int(opts.batch_target / max(t, 1e-7)),
                int(opts.batch_bytes / max(size, 1.0)),
            ),
        )
