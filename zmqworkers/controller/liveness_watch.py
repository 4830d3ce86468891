"""Which workers are still there: heartbeats, local processes, probes.

A worker is lost when its heartbeats stop, when its local process ends, or
when a send to it fails because its connection is gone. A worker declared
lost that turns out to be alive (a cut link that healed) is asked to say
hello again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from zmqworkers.controller.launcher import LocalWorkers
from zmqworkers.controller.options import EngineOptions
from zmqworkers.controller.scheduler import Scheduler
from zmqworkers.controller.sessions import Session
from zmqworkers.controller.sockets import ControllerSockets
from zmqworkers.protocol import Kind
from zmqworkers.protocol.liveness import Heartbeat, describe_silence

log = logging.getLogger(__name__)


class LivenessWatch:
    """The engine loop's liveness bookkeeping; runs on the engine thread."""

    def __init__(
        self,
        options: EngineOptions,
        controller_id: str,
        sched: Scheduler,
        sockets: ControllerSockets,
        local: LocalWorkers,
        send: Callable[..., bool],
        lose: Callable[[str, str], None],
    ) -> None:
        self.options = options
        self._id = controller_id
        self._sched = sched
        self._sockets = sockets
        self._local = local
        self._send = send
        self._lose = lose
        self.heartbeat = Heartbeat(options.heartbeat_interval, options.heartbeat_misses)
        # Workers declared lost, and when each was last asked to say hello
        # again (if it turns out to be alive: a cut link that healed).
        self._lost_ids: dict[str, float] = {}
        # Silent workers, and when each was last asked whether it is there.
        self._asked: dict[str, float] = {}
        self._probe_at: list[float] = []

    def next_probe(self) -> list[float]:
        """The next probe's time, if one is due: ``[t]`` or ``[]``."""
        return self._probe_at[:1]

    def probe_if_due(self, now: float) -> None:
        if self._probe_at and now >= self._probe_at[0]:
            self._probe_at = [t for t in self._probe_at if t > now]
            self.probe()

    def joined(self, wid: str, now: float) -> None:
        self.heartbeat.seen(wid, now)
        self._lost_ids.pop(wid, None)

    def was_lost(self, wid: str) -> bool:
        return wid in self._lost_ids

    def lost(self, wid: str) -> None:
        self.heartbeat.forget(wid)
        self._asked.pop(wid, None)
        if len(self._lost_ids) < 100_000:
            self._lost_ids[wid] = float("-inf")

    def ask_to_rejoin(self, s: Session, live: bool) -> None:
        """A worker declared lost is alive after all (a cut link came back).

        Its late results still count if not delivered yet; it is asked to say
        hello again so it gets work, and asked again after a while, in case
        the request went into a connection that was gone.
        """
        wid = s.state.id
        now = time.monotonic()
        if live or now - self._lost_ids[wid] <= self.heartbeat.limit:
            return
        self._lost_ids[wid] = now
        log.info("worker %s, declared lost, is back: asking it to rejoin", wid)
        # Gone again, the request is lost: the next heartbeat asks again.
        stop = {"worker": wid, "rejoin": True}
        self._sockets.send_unsolicited(s.route, Kind.STOP, stop, key=s.key)

    def check(self, now: float, closing: bool) -> None:
        for gone in self._local.reap():
            wid = self._worker_by_pid(gone.pid)
            if wid is not None:
                self._lose(wid, gone.how)
            if gone.renew and not closing:
                # Replaced by design: counts against no crash-loop limit.
                self._local.start(self._sockets.local_address, 1)
            elif not gone.expected and not closing:
                log.warning("local worker pid %d %s", gone.pid, gone.how)
                if self.options.replace_dead_workers and self._local.may_replace():
                    self._local.start(self._sockets.local_address, 1)
        for wid, silent in self.heartbeat.expired(now):
            if wid not in self._sched.workers:
                self.heartbeat.forget(wid)
                self._asked.pop(wid, None)
            elif not self._answers(wid, silent, now):
                self._lose(wid, describe_silence(silent, self.options.heartbeat_interval))

    def _answers(self, wid: str, silent: float, now: float) -> bool:
        """Whether a silent worker's connection is still there (see protocol.liveness).

        Its heartbeat thread may be held up (a call or a large result's
        pickle holding the GIL), while ZeroMQ's I/O thread still answers the
        task socket's pings; ZeroMQ closes the connection of a worker that
        answers nothing, and a send to it then fails. Asked once an interval.
        """
        if now - self._asked.get(wid, float("-inf")) < self.options.heartbeat_interval:
            return True
        self._asked[wid] = now
        probe = {"controller": self._id, "probe": True}
        if not self._send(wid, Kind.HEARTBEAT, probe, lose_on_fail=False):
            return False
        log.debug("worker %s silent for %.1f s, but its connection answers", wid, silent)
        return True

    def on_disconnect(self) -> None:
        # The event names a file descriptor, not a routing id, and a new
        # connection may reuse the descriptor before this event is read.
        # So probe instead: a send to a peer whose connection is gone
        # fails at once (ROUTER_MANDATORY). The ROUTER drops the pipe a
        # moment after the event, so probe again shortly after.
        self.probe()
        now = time.monotonic()
        self._probe_at = sorted({*self._probe_at, now + 0.05, now + 0.25})

    def probe(self) -> None:
        for wid in list(self._sched.workers):
            self._send(wid, Kind.HEARTBEAT, {"controller": self._id, "probe": True})

    def how_gone(self, wid: str) -> str:
        w = self._sched.workers.get(wid)
        how = self._local.how_gone(w.pid) if w is not None and w.local else None
        if how:
            return how
        # Closed by ZeroMQ after its pings went unanswered: say it was silent.
        silent = self.heartbeat.silent_for(wid, time.monotonic())
        if silent > self.options.heartbeat_interval:
            return describe_silence(silent, self.options.heartbeat_interval)
        return "connection closed: process died or host reset the link"

    def _worker_by_pid(self, pid: int) -> str | None:
        for w in self._sched.workers.values():
            if w.local and w.pid == pid:
                return w.id
        return None
