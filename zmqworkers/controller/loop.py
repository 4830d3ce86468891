"""The engine thread: one loop owns every controller socket.

Like the manager thread of CPython's ``ProcessPoolExecutor``: it wakes on
a command (queue + one byte on a wake pipe) or a message, hands each to
its handler, dispatches what the scheduler assigns, and keeps time for
heartbeats and liveness. The parts it glues each live in a module of
their own: sockets (:mod:`.sockets`), sessions (:mod:`.sessions`),
scheduling (:mod:`.scheduler`), batching (:mod:`.batching`, :mod:`.dispatch`),
local processes (:mod:`.launcher`) and liveness (:mod:`.liveness_watch`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import secrets
import socket as pysocket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

import zmq

from zmqworkers import remote as remote_logs
from zmqworkers._version import __version__
from zmqworkers.controller import forkserver
from zmqworkers.controller.batching import Batcher, Spec
from zmqworkers.controller.control import TaskControl
from zmqworkers.controller.dispatch import Dispatcher
from zmqworkers.controller.launcher import LocalWorkers
from zmqworkers.controller.liveness_watch import LivenessWatch
from zmqworkers.controller.options import EngineOptions
from zmqworkers.controller.scheduler import Scheduler, TaskOptions
from zmqworkers.controller.sessions import Session, SessionTable
from zmqworkers.controller.sockets import ControllerSockets
from zmqworkers.controller.telemetry import Telemetry
from zmqworkers.errors import DecodeError, EngineClosed, ProtocolVersionError
from zmqworkers.protocol import PROTOCOL_VERSION, Kind, Message, ReplayGuard, decode
from zmqworkers.protocol.messages import NONCE_SIZE, peek_version
from zmqworkers.protocol.records import (
    Bye,
    Hello,
    Refused,
    Status,
)

log = logging.getLogger(__name__)

# How long the engine runs commands in one turn of its loop before it serves
# its sockets and clocks again: a caller that submits faster than the engine
# adds (`map` over a long iterable) would otherwise hold it in its command
# queue, with no heartbeat, result or hello served. Bounded by time, not by
# count: a submit may carry one task or 4,096 (about 3 ms), and thousands of
# one-task submits in one turn still go out in few messages.
COMMAND_TURN_SECONDS = 0.02


class EngineHandler(Protocol):
    """What the engine reports, called on the engine thread."""

    def on_results(self, results: list[tuple[int, bool, Any]]) -> None: ...

    def on_event(self, name: str, data: Any) -> None: ...


def _info(controller_id: str, host: str, sched: Scheduler) -> dict[str, Any]:
    """The answer to an info request: who this controller is and what it has."""
    return {
        "controller": controller_id,
        "host": host,
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "queued": sched.queued,
        "workers": [
            {k: v for k, v in w.snapshot().items() if k != "last_heartbeat"}
            for w in sched.workers.values()
        ],
    }


class EngineLoop:
    """The controller's state and event loop; every method runs on the engine thread.

    Only :class:`~zmqworkers.controller.engine.Engine` talks to it: through
    the command queue, and (once ``closed`` is set) by reading ``sched``,
    ``dropped`` and ``stats``, which then no longer change.
    """

    def __init__(
        self,
        options: EngineOptions,
        handler: EngineHandler,
        commands: queue.SimpleQueue[tuple[str, Any]],
        wake: tuple[int, int],
    ) -> None:
        self.options = options
        self.handler = handler
        self.id = f"ctl-{uuid.uuid4().hex[:8]}"
        # The wake pipe: closed here, as the loop is the last to use it.
        self._wake_r, self._wake_w = wake
        self._sockets = ControllerSockets(options, self.id)
        self._local = LocalWorkers.for_engine(options)
        if options.start_method == "forkserver" and options.n_workers > 0:
            _ask_for_local_workers(options, self._sockets, self._local)
        try:
            self.host = pysocket.gethostname()
            self.address = ""
            self.sched = Scheduler(max_attempts=options.max_attempts)
            self.dropped: Counter[str] = Counter()
            self.stats: Counter[str] = Counter()
            self.telemetry = Telemetry()
            self.ready = threading.Event()
            self.closed = threading.Event()
            self.start_error: BaseException | None = None
            self._commands = commands
            self._batcher = Batcher(options)
            self._guard = ReplayGuard()
            self._sessions: SessionTable | None = None  # once the sockets are bound
            self._dispatcher = Dispatcher(
                self.sched,
                self._batcher,
                self._send,
                self._deliver,
                self.host,
                self.stats,
                lambda: self._sockets.seq,
            )
            self._closing = False
            self._stop_grace = options.stop_timeout
            self._watch = LivenessWatch(
                options, self.id, self.sched, self._sockets, self._local, self._send, self._lose
            )
            self.control = TaskControl(
                options.task_timeout, self.sched, self._local, self._send, self._sockets.publish
            )
            self.control.wire(
                self._retire, self._deliver, self.stats, handler.on_event, self._take_results
            )
            self._dispatcher.timed = lambda: self.control.timed
            self._on_command: dict[str, Callable[[Any], None]] = {
                "submit": self._cmd_submit,
                "cancel_many": self._cmd_cancel_many,
                "pause": self._cmd_pause,
                "call": self._cmd_call,
                "stop_workers": self._cmd_stop_workers,
                "start_workers": self._cmd_start_workers,
                "shutdown": self._cmd_shutdown,
            }
            # Per message kind on the result channel, from a live session.
            self._on_result_kind: dict[Kind, Callable[[Session, Message], None]] = {
                Kind.RESULTS: self._on_results_msg,
                Kind.HEARTBEAT: self._on_heartbeat,
                Kind.BYE: self._on_bye,
                Kind.MESSAGE: self._on_message,
            }
        except BaseException:
            self.discard()  # the workers just asked for, with the rest
            raise

    @property
    def sockets(self) -> ControllerSockets:
        return self._sockets

    def discard(self) -> None:
        """For an engine never run: what its making started ends (local workers asked
        for early, the ipc folder, the wake pipe)."""
        self._local.end_all()
        self._sockets.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def run(self) -> None:
        try:
            self._bind()
        except BaseException as exc:
            self._local.end_all()
            self._sockets.close()
            self.start_error = exc
            self.ready.set()
            self.closed.set()
            return
        self.ready.set()
        try:
            self._local.start(self._sockets.local_address, self._local.target)
            self._loop()
        except BaseException:
            log.exception("controller engine failed")
            raise
        finally:
            self._teardown()

    def _bind(self) -> None:
        socks, opts = self._sockets, self.options
        socks.bind()
        self.address = socks.address
        self._sessions = SessionTable(socks.session_link(self.host))
        self._dispatcher.packs = self._sessions.packs
        if opts.connection_file:
            from zmqworkers.security.connection import write_connection_file

            written = write_connection_file(opts.connection_file, self.address, opts.key)
            socks.leftovers.add(written)

    def _loop(self) -> None:
        opts, socks = self.options, self._sockets
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        poller.register(socks.router, zmq.POLLIN)
        poller.register(socks.pull, zmq.POLLIN)
        poller.register(socks.monitor, zmq.POLLIN)
        next_beat = 0.0
        next_check = 0.0
        stop_deadline = 0.0
        backlog = False  # commands left for the next turn
        while True:
            now = time.monotonic()
            wake_at = min(next_beat, next_check, *self._watch.next_probe())
            wake_at = min(wake_at, self.control.next_deadline())
            timeout_ms = 0 if backlog else int(max(0.0, wake_at - now) * 1000) + 1
            events = dict(poller.poll(timeout_ms))
            if backlog or self._wake_r in events:
                backlog = not self._drain_commands()
            if socks.router in events:
                _recv_all(socks.router, self._on_task_channel, self.dropped)
            if socks.pull in events:
                _recv_all(socks.pull, self._on_result_channel, self.dropped)
            if socks.monitor in events and socks.read_monitor():
                self._watch.on_disconnect()
            self._dispatcher.run()
            now = time.monotonic()
            self.control.check(now)
            self._watch.probe_if_due(now)
            if now >= next_beat:
                self._sockets.publish(Kind.HEARTBEAT, {"controller": self.id})
                next_beat = now + opts.heartbeat_interval
            if now >= next_check:
                self._check_liveness(now)
                next_check = now + min(opts.process_check_interval, opts.heartbeat_interval)
            if self._closing:
                if not stop_deadline:
                    stop_deadline = now + self._stop_grace
                if not len(self._local) or now > stop_deadline:
                    return

    def _decode(self, frames: list[Any], key: Any) -> Any:
        msg = decode(frames, key, max_size=self.options.max_message_size)
        self._guard.check(msg.sender, msg.seq)
        return msg

    # -- command handlers ---------------------------------------------------

    def _drain_commands(self) -> bool:
        """Run waiting commands for up to COMMAND_TURN_SECONDS; True when none is left."""
        with contextlib.suppress(BlockingIOError):  # emptied on an earlier turn
            os.read(self._wake_r, 65536)
        until = time.monotonic() + COMMAND_TURN_SECONDS
        while time.monotonic() < until:
            try:
                name, arg = self._commands.get_nowait()
            except queue.Empty:
                return True
            self._on_command[name](arg)
        return False

    def _cmd_submit(self, arg: tuple[Spec, list[tuple[int, Any]], TaskOptions | None]) -> None:
        spec, items, opts = arg
        opts = self.control.options_for(opts)
        self._batcher.add(spec, self.sched.spec_refs)
        self.sched.add_many(spec.id, items, opts)
        self.stats["submitted"] += len(items)

    def _cmd_cancel_many(self, task_ids: list[int]) -> None:
        self.control.cancel(task_ids, force=False)

    def _cmd_pause(self, paused: bool) -> None:
        self.sched.paused = paused

    def _cmd_call(self, arg: tuple[Callable[[], Any], Future[Any]]) -> None:
        fn, fut = arg
        try:
            fut.set_result(fn())
        except BaseException as exc:
            fut.set_exception(exc)

    def _cmd_stop_workers(self, _: Any) -> None:
        self._local.stopping()
        for w in list(self.sched.workers.values()):
            w.draining = True
            self._send(w.id, Kind.STOP, {"worker": w.id})

    def _cmd_start_workers(self, n: int | None) -> None:
        self._local.start_up_to(
            self._sockets.local_address, self.options.n_workers if n is None else n
        )

    def _cmd_shutdown(self, grace: float | None) -> None:
        self._stop_grace = self.options.stop_timeout if grace is None else grace
        self._cmd_stop_workers(None)
        self._sockets.publish(Kind.STOP, {"worker": None})
        self._closing = True

    # -- sending ------------------------------------------------------------

    def _send(
        self, worker_id: str, kind: Kind, header: Any, body: Any = (), lose_on_fail: bool = True
    ) -> bool:
        assert self._sessions is not None
        s = self._sessions.live.get(worker_id)
        if s is None:
            return False
        try:
            # MessageTooLarge goes up to the dispatcher, which fails the task.
            nbytes = self._sockets.send(s.route, s.key, kind, header, body, s.limit)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                if lose_on_fail:
                    self._lose(worker_id, self._watch.how_gone(worker_id))
                return False
            raise
        self.stats["messages_sent"] += 1
        self.stats["bytes_sent"] += nbytes
        if kind == Kind.FUNC:
            self.stats["functions_sent"] += 1
        return True

    # -- the task channel: hellos and info requests -------------------------

    def _on_task_channel(self, frames: list[Any]) -> None:
        routing_id = frames[0].bytes
        body = frames[1:]
        try:
            msg = self._decode(body, self.options.key)
        except ProtocolVersionError as exc:
            theirs = peek_version(body)
            refusal = (
                f"worker speaks protocol {theirs}, controller {PROTOCOL_VERSION}: "
                "install the same zmqworkers release on both sides"
            )
            # Nothing in it is authenticated: the answer goes unsigned and the
            # log line is rate-limited (as every drop is) by the caller.
            answer = Refused(refusal, "version", fatal=True, version=True)
            self._sockets.send_unsigned(routing_id, Kind.REFUSED, answer.header())
            raise DecodeError("version", refusal) from exc
        if msg.kind == Kind.INFO:
            self._on_info(routing_id, msg.sender)
        elif msg.kind == Kind.HELLO:
            self._on_hello(routing_id, Hello.parse(msg.header))
        else:
            raise DecodeError("unexpected", f"{msg.kind.name} on the task channel")

    def _on_hello(self, routing_id: bytes, hello: Hello) -> None:
        assert self._sessions is not None
        answer = self._sessions.hello(
            routing_id,
            hello,
            time.monotonic(),
            secrets.token_bytes(NONCE_SIZE),
            closing=self._closing,
            local_pids=self._local.procs,
        )
        if isinstance(answer, Refused):
            if answer.fatal:
                log.error("refused worker %s: %s", hello.id, answer.reason)
                self.dropped[answer.code] += 1
            self._sockets.send_unsolicited(routing_id, Kind.REFUSED, answer.header())
            return
        welcome = self._sockets.welcome(hello.nonce, answer)
        self._sockets.send_unsolicited(answer.route, Kind.WELCOME, welcome.header())
        if answer.joins_at_welcome and not answer.joined:
            self._join(answer)  # its first tasks follow the welcome

    def _on_info(self, routing_id: bytes, sender: str) -> None:
        # Answered to whoever holds the key: `zmqworkers info ADDRESS`.
        # The client reads one reply and goes, so its sequence is forgotten.
        self._guard.forget(sender)
        header = _info(self.id, self.host, self.sched)
        self._sockets.send_unsolicited(routing_id, Kind.INFO, header)

    # -- the result channel: results, heartbeats, goodbyes, messages --------

    def _on_result_channel(self, frames: list[Any]) -> None:
        assert self._sessions is not None
        sessions = self._sessions
        msg = self._decode(frames, lambda sender: sessions.of_sender(sender).key)
        s = sessions.of_sender(msg.sender)
        wid = s.state.id
        kind = msg.kind
        self.telemetry.received(msg.nbytes)
        if s.retired:
            # Left or lost: a late result is still taken, nothing else.
            if kind == Kind.RESULTS:
                self._dispatcher.take_results(wid, msg.payload)
            if kind in (Kind.HEARTBEAT, Kind.RESULTS) and self._watch.was_lost(wid):
                assert self._sessions is not None
                self._watch.ask_to_rejoin(s, wid in self._sessions.live)
            return
        if not s.heard:
            s.heard = True  # it has its welcome (see _lose)
            if not s.joined:
                self._join(s)
        w = s.state
        w.last_seen = time.monotonic()
        self._watch.heartbeat.seen(wid, w.last_seen)
        handle = self._on_result_kind.get(kind)
        if handle is None:
            raise DecodeError("unexpected", f"{kind.name} on the result channel")
        handle(s, msg)

    def _on_results_msg(self, s: Session, msg: Message) -> None:
        spec_id = self._dispatcher.take_results(s.state.id, msg.payload)
        self.telemetry.ran(msg.header)
        if spec_id is not None and isinstance(msg.header, dict):
            self._batcher.tune(spec_id, msg.header, msg.nbytes)

    def _on_heartbeat(self, s: Session, msg: Message) -> None:
        status = Status.parse(msg.header, s.state.id)
        w = s.state
        if status.state is not None:
            w.state = status.state
        w.current = status.task
        w.rss, w.cpu = (status.rss, status.cpu) if status.rss is not None else (w.rss, w.cpu)
        self._dispatcher.reconcile(w.id, status)

    def _on_bye(self, s: Session, msg: Message) -> None:
        wid = s.state.id
        bye = Bye.parse(msg.header, wid)
        self.sched.hand_back(wid, bye.returned, count=False)
        if bye.failed is not None:  # ends mid-call (memory): the call counts an attempt
            self._lose(wid, bye.failed, bye.task)
            return
        self.stats["interrupted"] += bye.task is not None  # a task cancelled with force ran
        self.sched.leave(wid)
        self._end_session(wid)
        self._watch.heartbeat.forget(wid)
        log.info("worker %s left, handed back %d task(s)", wid, len(bye.returned))
        self.handler.on_event("worker_left", wid)

    def _on_message(self, s: Session, msg: Message) -> None:
        if not remote_logs.forwarded(s.state, msg.header):  # a task's log record
            self.handler.on_event("message", msg.header)

    def _deliver(self, out: list[tuple[int, bool, Any]]) -> None:
        if not out:
            return
        self.stats["delivered"] += len(out)
        self.telemetry.delivered(out, time.monotonic())
        try:
            self.handler.on_results(out)
        except Exception:
            log.exception("result handler raised; results were delivered to it once")

    # -- sessions -----------------------------------------------------------

    def _join(self, s: Session) -> None:
        assert self._sessions is not None
        wid = s.state.id
        self._sessions.leave_pending(s)
        if wid in self._sessions.live:
            # Said hello again (reconnected): what it held is not coming back.
            self._lose(wid, "reconnected")
        now = time.monotonic()
        self._sessions.go_live(s, now)
        self.sched.join(s.state)
        self._watch.joined(wid, now)
        log.info("worker %s joined (host %s, pid %d)", wid, s.state.host, s.state.pid)
        self.handler.on_event("worker_joined", s.state.snapshot())
        if s.state.local and self._local.asked_to_leave(s.state.pid):
            # Started before a stop but slow to join (a loaded machine): the
            # stop went only to the workers that had joined, so tell it now.
            s.state.draining = True
            self._send(wid, Kind.STOP, {"worker": wid})

    def _retire(self, wid: str) -> None:  # its process is being replaced
        self._end_session(wid)
        self._watch.lost(wid)

    def _end_session(self, wid: str) -> None:
        assert self._sessions is not None
        session = self._sessions.live.get(wid)
        for sender in self._sessions.end(wid):
            self._guard.forget(sender)
        if session is not None and session.key.segments is not None:
            self._local.end_segments_at_exit(session.state, session.key.segments)

    # -- liveness (the rules are in .liveness_watch) -----------------------

    def _check_liveness(self, now: float) -> None:
        assert self._sessions is not None
        self._watch.check(now, self._closing)
        expired = self._sessions.expire(now)
        if expired:
            self.stats["hellos_expired"] += expired

    def _take_results(self) -> None:
        _recv_all(self._sockets.pull, self._on_result_channel, self.dropped)

    def _lose(self, wid: str, how: str, running: int | None = None) -> None:
        if wid not in self.sched.workers:
            return
        # Results it sent before dying may wait unread: take them first, so
        # the blame for the death falls on the task it was really running.
        self._take_results()
        if wid not in self.sched.workers:
            return  # it said goodbye after all
        log.warning("worker %s lost: %s", wid, how)
        self._watch.lost(wid)
        s = self._sessions.live.get(wid) if self._sessions is not None else None
        if s is not None and not s.heard:
            # Joined at its welcome and gone before its first word (sent
            # before it runs anything): what it was sent goes back unblamed.
            self.sched.hand_back(wid, list(self.sched.workers[wid].in_flight), count=False)
        failed = self.sched.lose(wid, how, running)
        self._end_session(wid)
        self.stats["workers_lost"] += 1
        self.handler.on_event("worker_lost", {"id": wid, "how": how})
        self._deliver([(tid, False, err) for tid, err in failed])

    def _teardown(self) -> None:
        self._local.end_all()
        # Results sent just before the workers left still count.
        try:
            _recv_all(self._sockets.pull, self._on_result_channel, self.dropped)
        except zmq.ZMQError:
            pass  # the engine failed with its sockets: nothing to read
        abandoned = list(self.sched.tasks)
        self.closed.set()
        self._sockets.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        abandoned.extend(_answer_late_commands(self._commands))
        self.handler.on_event("closed", abandoned)


def _answer_late_commands(commands: queue.SimpleQueue[tuple[str, Any]]) -> list[int]:
    """Answer the commands that came in after the last drain; the tasks they submitted."""
    abandoned: list[int] = []
    while True:
        try:
            name, arg = commands.get_nowait()
        except queue.Empty:
            return abandoned
        if name == "submit":
            abandoned.extend(tid for tid, _ in arg[1])
        elif name == "call":
            arg[1].set_exception(EngineClosed("the controller engine is closed"))


def count_drop(dropped: Counter[str], exc: DecodeError) -> None:
    """Count a dropped message by its reason; log the 1st, 2nd, 4th, 8th, ..."""
    dropped[exc.reason] += 1
    n = dropped[exc.reason]
    if n & (n - 1) == 0:
        log.warning("dropped message (%s); %d dropped for this reason", exc, n)


def _ask_for_local_workers(
    options: EngineOptions, sockets: ControllerSockets, local: LocalWorkers
) -> None:
    """While this process may still be a single thread, the fork server is forked
    from it and asked for the local workers at once: they start while the rest
    of the engine is made and its sockets are bound (they dial until then)."""
    planned = sockets.plan_local_ipc()
    if planned is not None:
        local.start_early(planned, local.target)
    else:
        forkserver.start_server_early(options.worker_env)


def _recv_all(
    sock: zmq.Socket[Any], handle: Callable[[list[Any]], None], dropped: Counter[str]
) -> None:
    # Bounded, so one flooding peer cannot starve the other sockets.
    for _ in range(1000):
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        try:
            handle(frames)
        except DecodeError as exc:
            count_drop(dropped, exc)
        except Exception as exc:
            # A signed message this code cannot handle (a bug, or a peer
            # of another release): dropped like any other, never fatal.
            log.debug("message handler raised", exc_info=True)
            count_drop(dropped, DecodeError("invalid", repr(exc)))
