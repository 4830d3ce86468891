"""A worker's signals: SIGTERM (and a daemon's SIGINT) drain, a second one leaves at once.

Draining lets the running call finish, within ``drain_timeout``; a call
that runs on past it is handed back with everything queued, and the
process exits from the watchdog thread.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import threading
import time
from typing import Any, Protocol

from zmqworkers.protocol import SessionKey
from zmqworkers.protocol.records import Bye
from zmqworkers.protocol.session import DRAIN_CHANNEL
from zmqworkers.security.curve import ClientKeys
from zmqworkers.worker import links
from zmqworkers.worker.group import kill_rest_of_group
from zmqworkers.worker.options import WorkerOptions

log = logging.getLogger(__name__)


class Draining(Protocol):
    """The worker state a drain reads, and the flag it sets."""

    id: str
    options: WorkerOptions
    _terminate: bool
    _current: int | None
    _state: str
    _hb_stop: threading.Event
    _queue: collections.deque[tuple[int, str, Any, bool]]
    _results_ep: str | None
    _result_sender: str
    _skey: bytes | SessionKey
    _curve: ClientKeys | None


class Drain:
    """The signal handlers of one worker and the watchdog they start."""

    def __init__(self, worker: Draining) -> None:
        self.worker = worker
        self.started = False
        # Readable once a signal has come (installed handlers only): the
        # worker's idle wait polls it with its sockets, as pyzmq polls again
        # after EINTR and would see the handler's flag only at its timeout.
        self.wake_fd: int | None = None

    def install(self) -> None:
        w = self.worker

        def on_term(signum: int, frame: Any) -> None:
            if w._terminate and self.started:
                log.warning("worker %s: signal %d again, leaving now", w.id, signum)
                self.leave_now()
            log.info("worker %s: got signal %d, draining", w.id, signum)
            w._terminate = True
            if not self.started:
                self.started = True
                threading.Thread(
                    target=self._watchdog, name="zmqworkers-drain", daemon=True
                ).start()

        signal.signal(signal.SIGTERM, on_term)
        # Ctrl-C in the user's terminal reaches every process of the group;
        # a local worker lets its controller decide when to stop it.
        if w.options.parent_pid is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGINT, on_term)
        if self.wake_fd is None:
            read_end, write_end = os.pipe()
            for fd in (read_end, write_end):
                os.set_blocking(fd, False)
            # Written by the interpreter the moment a signal arrives. A task
            # that sets a wakeup descriptor of its own (an asyncio loop with
            # signal handlers) takes this one away: then the idle wait's
            # timeout is the bound again.
            signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
            self.wake_fd = read_end

    def woken(self) -> None:
        """Empty the wakeup pipe (its bytes only say that signals came)."""
        try:
            while self.wake_fd is not None and os.read(self.wake_fd, 512):
                pass
        except BlockingIOError:
            pass

    def _watchdog(self) -> None:
        w = self.worker
        deadline = time.monotonic() + w.options.drain_timeout
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if w._current is None and w._state == "idle" and w._hb_stop.is_set():
                return  # the main thread left by itself
        if w._current is not None:
            log.warning(
                "worker %s: task %s still running after the %.1f s drain timeout",
                w.id,
                w._current,
                w.options.drain_timeout,
            )
            self.leave_now()

    def leave_now(self) -> None:
        """Hand back the running call and everything queued, then exit.

        Runs off the main thread (which is stuck in the call), so it uses a
        context and socket of its own.
        """
        w = self.worker
        returned = [t[0] for t in list(w._queue)]
        if w._current is not None:
            returned.insert(0, w._current)
        ep = w._results_ep
        if ep is not None:
            # Under a sender name of this session, signed with its key.
            sender = w._result_sender.rpartition("/")[0] + "/" + DRAIN_CHANNEL
            bye = Bye(w.id, returned)
            links.send_goodbye(ep, w._curve, sender, w._skey, bye.header())
        log.info("worker %s: left mid-call, %d task(s) handed back", w.id, len(returned))
        kill_rest_of_group()  # the interrupted call's children go with it
        os._exit(0)
