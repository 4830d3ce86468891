"""Task log records sent to the controller (``forward_logs``), bounded per second.

While a session asks for it (its welcome names a level), a handler on the
root logger sends each record that a task emits on the thread that runs
the tasks, at that level or above, as a MESSAGE with a ``log`` map. The
worker's own records (``zmqworkers.*``) stay local. A token bucket bounds
them: ``RATE`` a second, bursts of ``BURST``; what it drops is counted and
the count goes with the next record sent (or alone when the session ends),
so the controller can say how many were lost.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from zmqworkers.protocol.records import ForwardedLog

RATE = 100.0  # records a second, per worker
BURST = 200

Send = Callable[..., bool]  # send_message(text, log=header) on the task thread


class LogForwarder(logging.Handler):
    def __init__(
        self,
        level: int,
        send: Send,
        rate: float = RATE,
        burst: int = BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(level)
        self._send = send
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()
        self.dropped = 0  # since the last record sent
        self.sent = 0
        self._sending = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("zmqworkers") or self._sending:
            return
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1.0:
            self.dropped += 1
            return
        try:
            message = record.getMessage()
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                message = f"{message}\n{record.exc_text}"
        except Exception:
            message = f"{record.msg!r} (its arguments did not format)"
        rec = ForwardedLog(record.levelno, record.name, message, record.created, self.dropped)
        if self._deliver(rec):
            self._tokens -= 1.0

    def _deliver(self, rec: ForwardedLog) -> bool:
        self._sending = True  # a record logged while sending is not sent again
        try:
            sent = self._send(rec.message[:200], log=rec.header())
        except Exception:
            sent = False
        finally:
            self._sending = False
        if sent:
            self.sent += 1
            self.dropped = 0
        return sent

    def flush_drops(self) -> None:
        """Say the count of records dropped since the last one sent, if any."""
        if self.dropped:
            self._deliver(ForwardedLog(0, "", "", time.time(), self.dropped))


@contextlib.contextmanager
def forwarding(level_name: str, send: Send) -> Iterator[LogForwarder | None]:
    """Forward task records at ``level_name`` or above for the time of the block."""
    level = logging.getLevelName(level_name) if level_name else None
    if not isinstance(level, int):
        yield None
        return
    # Every task record propagates to the root logger (unless a task turns
    # that off): its handlers see them all.
    root = logging.root
    handler = LogForwarder(level, send)
    old_level = root.level
    # The root logger's level would stop a task's INFO records before any
    # handler saw them: lowered for the session, with the handlers already
    # there kept at what they printed before.
    kept: list[tuple[logging.Handler, int]] = []
    if level < old_level:
        for h in root.handlers:
            if h.level < old_level:
                kept.append((h, h.level))
                h.setLevel(old_level)
        root.setLevel(level)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        handler.flush_drops()
        root.removeHandler(handler)
        root.setLevel(old_level)
        for h, lvl in kept:
            h.setLevel(lvl)
