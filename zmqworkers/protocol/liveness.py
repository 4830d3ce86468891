"""Who is still alive: heartbeat bookkeeping as pure functions of a clock.

No sockets, threads or clocks: callers pass the time they read
(``time.monotonic()`` in the engine, any number in tests). The same code
serves both directions: the controller watches its workers, a worker
watches its controller.

A peer is silent once no message has come from it for ``interval * misses``
seconds. Any message counts as a sign of life, not only heartbeats: a worker
busy sending results is plainly alive.

Silence alone does not make a peer lost: the Python thread that sends
heartbeats needs the GIL, and a call or a pickle that holds it for seconds
(pickling a 1 GiB bytes object took 2.8 s here) silences a live worker. So
the task connection also carries ZeroMQ's own pings (:func:`ping_times`),
which ZeroMQ's I/O thread answers without the GIL: a peer is lost when it is
silent *and* its connection no longer answers (then ZeroMQ closes it). A
stopped process, a hung host or a cut link answers nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The defaults of both sides: every option that names them starts here.
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_MISSES = 3


@dataclass
class Heartbeat:
    """Last sign of life per peer; which peers have been silent too long."""

    interval: float = HEARTBEAT_INTERVAL
    misses: int = HEARTBEAT_MISSES
    last_seen: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"heartbeat interval must be > 0 seconds, not {self.interval!r}")
        if self.misses < 1:
            raise ValueError(f"heartbeat misses must be >= 1, not {self.misses!r}")

    @property
    def limit(self) -> float:
        """Seconds of silence after which a peer is lost."""
        return self.interval * self.misses

    def seen(self, peer: str, now: float) -> None:
        """A message from ``peer`` arrived at ``now``."""
        # A message processed late must not move the clock back.
        if now > self.last_seen.get(peer, float("-inf")):
            self.last_seen[peer] = now

    def forget(self, peer: str) -> None:
        self.last_seen.pop(peer, None)

    def silent_for(self, peer: str, now: float) -> float:
        return now - self.last_seen.get(peer, now)

    def expired(self, now: float) -> list[tuple[str, float]]:
        """Peers silent for longer than :attr:`limit`, with how long, oldest first.

        They are not forgotten here: the caller decides (and calls
        :meth:`forget`), so a peer is reported until it is dealt with.
        """
        limit = self.limit
        out = [(p, now - t) for p, t in self.last_seen.items() if now - t > limit]
        out.sort(key=lambda pt: -pt[1])
        return out


def ping_times(interval: float, misses: int) -> tuple[int, int]:
    """ZeroMQ ping interval and timeout, in milliseconds, for a heartbeat rule.

    Pings go twice per heartbeat interval; a connection silent for the whole
    heartbeat limit after a ping is closed. So a peer that answers nothing
    is cut off between ``interval * misses`` and half an interval later.
    """
    return max(1, int(interval * 500)), max(1, int(interval * misses * 1000))


def describe_silence(seconds: float, interval: float) -> str:
    """How a lost peer is named in ``WorkerLost`` and the log."""
    missed = int(seconds / interval) if interval > 0 else 0
    return f"no heartbeat for {seconds:.1f} s ({missed} missed): host hung or link cut?"
