"""The worker program: connect, say hello, run tasks, send results.

The same program runs as a local subprocess of a controller and as a daemon
on another machine. It never imports Qt.

::

    controller ROUTER ──TASKS/FUNC/STOP──▶ DEALER ┐
                                                   ├─ main thread: runs the calls
    controller PULL  ◀──RESULTS/BYE────── PUSH    ┘
    controller PULL  ◀──HEARTBEAT──────── PUSH  ── heartbeat thread (own socket)
    controller PUB   ───HEARTBEAT/STOP──▶ SUB   ── main thread

The heartbeat thread has a socket of its own, so a call that runs for an hour
keeps its worker looking alive without ever sharing a socket across threads.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import os
import socket as pysocket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq

from zmqworkers.errors import DecodeError, ProtocolVersionError
from zmqworkers.protocol import (
    Kind,
    ReplayGuard,
    SessionKey,
    decode,
    encode,
)
from zmqworkers.protocol.records import Bye, Refused
from zmqworkers.protocol.session import (
    HEARTBEAT_CHANNEL,
    RESULTS_CHANNEL,
    sender_name,
)
from zmqworkers.security import curve
from zmqworkers.worker import current, links, logforward
from zmqworkers.worker.calls import (
    FunctionCache,
    Outcome,
    describe_exception,
    holding,
    result_messages,
    task_entries,
    within,
)
from zmqworkers.worker.calls import make_call as make_call
from zmqworkers.worker.current import send_message as send_message
from zmqworkers.worker.drain import Drain
from zmqworkers.worker.guard import TaskMarks, drop_cancelled, recycle_reason, start_guard
from zmqworkers.worker.handshake import (
    Joined,
    end_segments,
    join,
    side_endpoint,
    version_refusal,
)
from zmqworkers.worker.options import EXIT_RECYCLED
from zmqworkers.worker.options import EXIT_REFUSED as EXIT_REFUSED
from zmqworkers.worker.options import WorkerOptions as WorkerOptions
from zmqworkers.worker.silence import EXIT_NO_CONTROLLER
from zmqworkers.worker.standby import GUARD_THREAD, HEARTBEAT_THREAD, StandbyThread, standby

log = logging.getLogger(__name__)

# A result batch is sent once it holds this many results (the controller's
# largest TASKS batch), once its calls have run this long, or when the worker
# has nothing queued: tiny tasks share messages, a slow task's result is
# never held back. Call time, not the clock: a worker that shares its core
# with many others is often paused mid-batch, and aged by the clock, each
# pause sent a message of a few results (more messages, more wake-ups).
RESULT_BATCH_MAX = 512
RESULT_BATCH_SECONDS = 0.005
# Between tasks, how often a local worker checks that its controller runs:
# not before every task, as two system calls a task add up when tasks are tiny.
PARENT_CHECK_SECONDS = 0.05
# Between tasks, how often the sockets are read while tasks are queued (and
# at once when none are): a poll per tiny task was about a fifth of a worker's
# CPU time.
INGEST_SECONDS = 0.001
# In between, how often a poll(2) of the sockets' notification descriptors
# (a quarter of a read's cost) asks whether anything came since, to read it
# before the next task: a CANCEL or STOP that arrived more than this long
# before a task starts is seen, and one later is no later than a message
# still on a local link would be. Before each task, the poll took a local
# worker's CPU time per no-op task from 0.75 to 1.25 µs; every 50 µs (one
# poll per 110 or so such tasks, counted), it costs nothing that shows.
PEEK_SECONDS = 0.00005
# With nothing queued, how long the sockets are waited on before the loop
# looks at its clocks and flags (a signal's drain, a parent gone, silence).
# Each idle turn cost an idle worker about 70 µs of CPU: at 10 a second, 128
# idle workers on one host took a tenth of a core between them. A signal cuts
# the wait short through the wakeup pipe the drain installs (see drain.py);
# without it, pyzmq polls again after EINTR, and the flag the handler sets
# (_terminate: drain and leave) is seen up to this long later.
IDLE_POLL_MS = 250


class Every:
    """``due(now)`` is True at most once per ``seconds``, the first time at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._next = 0.0

    def due(self, now: float) -> bool:
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True


class Worker:
    """One worker process's loop. ``run()`` returns an exit status."""

    def __init__(self, address: str, key: bytes, options: WorkerOptions | None = None) -> None:
        self.address = address
        self.key = key
        self.options = options or WorkerOptions()
        self.host = pysocket.gethostname()
        self.id = self.options.name or f"{self.host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._curve = (
            curve.client_keys(self.options.curve_dir, self.options.curve_name)
            if self.options.curve_dir
            else None
        )
        self._ctx = zmq.Context()
        # One sequence per socket, as the receiver checks order per sender:
        # "<id>" for hellos, "<id>@<session>/r" for results, ".../hb" heartbeats.
        # Hellos count from the wall clock in milliseconds, so a worker that
        # restarts under the same name is not taken for a replay of itself.
        self._next_seq = itertools.count(time.time_ns() // 1_000_000 + 1).__next__
        self._result_seq = 0
        self._result_sender = sender_name(self.id, None, RESULTS_CHANNEL)
        self._hb_sender = sender_name(self.id, None, HEARTBEAT_CHANNEL)
        # Set per session from the controller's welcome: the key that signs
        # everything after the hello, and the one of the broadcast channel.
        self._skey: bytes | SessionKey = key
        self._pub_key = key
        # The largest message this session sends: the smaller of the two limits.
        self._limit = self.options.max_message_size
        self._funcs = FunctionCache()
        # (task id, spec id, argument, last of its message)
        self._queue: collections.deque[tuple[int, str, Any, bool]] = collections.deque()
        self.marks = TaskMarks()  # watched and doomed tasks, results held (guard.py)
        self._stop_requested = False  # by the controller (STOP)
        self._rejoin = False  # ... asking for a new hello
        self._terminate = False  # by a signal: drain and leave for good
        self._recycle: str | None = None  # why this process leaves to be replaced
        self._hb_stop = threading.Event()
        # Heartbeat numbers go on across sessions: a controller that saw this
        # worker before refuses numbers it has seen as replays.
        self._hb_seq = 0
        self._results_ep: str | None = None
        self._controller_id: str | None = None
        self._forward_logs = ""  # the level the session's welcome names, or ""
        # Set when heartbeats of another controller arrive: a new one bound
        # the address after ours died, and the session must start over.
        self._other_controller = False
        self._state = "idle"
        self._current: int | None = None
        self._tasks_seq = 0
        self._status_every = self.options.heartbeat_interval
        self._done = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self._results_sock: zmq.Socket[Any] | None = None
        self._serving_thread: int | None = None
        self.refused: str | None = None
        self._waiting_since = time.monotonic()
        self._drain = Drain(self)
        # A heartbeat needs no handler of its own: any message from the
        # controller updates when it was last heard.
        self._on_kind: dict[Kind, Callable[[Any, dict[str, Any]], bool]] = {
            Kind.TASKS: self._on_tasks,
            Kind.FUNC: lambda msg, hdr: self._funcs.take(
                hdr.get("spec"), msg.payload, hdr.get("forget")
            ),
            Kind.STOP: lambda msg, hdr: on_stop(self, hdr),
            Kind.CANCEL: lambda msg, hdr: drop_cancelled(self._queue, hdr),
            Kind.HEARTBEAT: lambda msg, hdr: True,
            Kind.INTERRUPT: lambda msg, hdr: True,  # the guard thread's
        }

    def install_signal_handlers(self) -> None:
        self._drain.install()

    # -- main -------------------------------------------------------------

    def run(self) -> int:
        """Serve controllers; 0 when done, 3 when the controller's protocol differs."""
        try:
            code = self._run()
            return EXIT_RECYCLED if code == 0 and self._recycle else code
        except ProtocolVersionError as exc:
            log.error("worker %s: %s", self.id, version_refusal(exc))
            return EXIT_REFUSED

    def _run(self) -> int:
        backoff = 0.1
        waited_since = self._waiting_since = time.monotonic()
        try:
            while True:
                try:
                    outcome = self._session()
                except ProtocolVersionError as exc:
                    self.refused = version_refusal(exc)
                    log.error("worker %s: refused: %s", self.id, self.refused)
                    return EXIT_REFUSED
                if self.refused is not None:
                    return EXIT_REFUSED
                if self._rejoin and not self._terminate and not self._should_exit():
                    self._rejoin = False
                    continue
                if outcome == "exit" or self._terminate or self._recycle or not self.options.daemon:
                    return 0
                if outcome == "served":
                    backoff = 0.1
                    waited_since = self._waiting_since = time.monotonic()
                dt = self.options.death_timeout
                if dt is not None and time.monotonic() - waited_since > dt:
                    log.warning("worker %s: no controller for %.0f s, exiting", self.id, dt)
                    return EXIT_NO_CONTROLLER
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        finally:
            end_segments(self._skey)
            self._ctx.destroy(linger=0)

    def _signing(self) -> tuple[str, int, bytes | SessionKey]:
        """Sender, next number and key of a message on the results socket."""
        self._result_seq += 1
        return self._result_sender, self._result_seq, self._skey

    def _decode(self, frames: list[Any], guard: ReplayGuard, key: bytes | SessionKey) -> Any:
        try:
            msg = decode(frames, key, max_size=self.options.max_message_size)
            guard.check(msg.sender, msg.seq)
            return msg
        except DecodeError as exc:
            if exc.kind == Kind.TASKS and exc.seq is not None:
                self._tasks_seq = exc.seq  # received, not held: the status says so
            self.dropped[exc.reason] += 1
            if self.dropped[exc.reason] in (1, 10, 100, 1000, 10000):
                log.warning("worker %s: dropped a message (%s)", self.id, exc)
            if exc.reason == "version":
                raise
            return None

    def _session(self) -> str:
        """Serve one controller. Returns "exit", "served" or "lost"."""
        opts = self.options
        tasks = links.dial_tasks(self._socket(zmq.DEALER), self.address, self.id, opts)
        # A local worker's result channel is most likely beside the task one:
        # dialled now, its connection is made while the hello goes out and
        # the welcome comes back, not after (its first message there says
        # the worker has its welcome; a remote worker gets no task before).
        guessed = links.local_side_endpoint(self.address, "results")
        early = links.dial_results(self._socket(zmq.PUSH), guessed) if guessed else None
        results: zmq.Socket[Any] | None = None
        control: zmq.Socket[Any] | None = None
        hb_thread: StandbyThread | None = None
        guard_thread: StandbyThread | None = None
        guard = ReplayGuard()
        try:
            # Started now, to wait while the hello waits: see standby.py.
            hb_thread = standby(HEARTBEAT_THREAD)
            guard_thread = standby(GUARD_THREAD)
            answer = self._handshake(tasks, guard)
            if answer is None:
                return "exit" if self._should_exit() else "lost"
            if isinstance(answer, Refused):
                reason = answer.reason
                if answer.fatal:
                    log.error("worker %s: refused by controller: %s", self.id, reason)
                    self.refused = reason
                    return "exit"
                # Not for good (the controller is shutting down): a daemon
                # waits for the next one.
                log.info("worker %s: not accepted now: %s", self.id, reason)
                return "lost" if self.options.daemon else "exit"
            welcome = answer.welcome
            results_ep = side_endpoint(self.address, welcome, "results")
            if early is not None and results_ep == guessed:
                results, early = early, None
            else:
                if early is not None:
                    early.close(linger=0)  # a wrong guess: nothing was sent on it
                    early = None
                results = links.dial_results(self._socket(zmq.PUSH), results_ep)
            # The controller takes the session as joined (or, for a local
            # worker joined at its welcome, as having it) at its first message
            # on this channel: one now, not the heartbeat thread's once it runs.
            results.send_multipart(encode(Kind.HEARTBEAT, *self._signing(), self._id_and_counts()))
            control_ep = side_endpoint(self.address, welcome, "control")
            control = links.dial_control(self._socket(zmq.SUB), control_ep)
            # Broadcasts published before this welcome are not for us: a
            # replayed old STOP is refused like any other replay.
            guard.check(f"{welcome.controller}/pub", welcome.pub_seq)
            self._results_ep = results_ep
            self._controller_id, self._forward_logs = welcome.controller, welcome.forward_logs
            self._other_controller = False
            interval = self._status_every = welcome.heartbeat_interval or opts.heartbeat_interval
            self._tasks_seq = 0  # the last TASKS message received in this session
            misses = welcome.heartbeat_misses or opts.heartbeat_misses
            self._hb_stop.clear()
            self.marks.doomed.clear()  # task ids are the controller's: a new one reuses them
            hb_thread.begin(
                functools.partial(
                    self._heartbeat_loop, results_ep, interval, self._skey, self._hb_sender
                )
            )
            start_guard(self, self._socket(zmq.SUB), welcome, self._hb_stop, guard_thread)
            log.info("worker %s: joined controller %s", self.id, welcome.controller)
            return self._serve(tasks, results, control, guard, interval * misses)
        finally:
            self._hb_stop.set()
            self._results_ep = None
            for thread in filter(None, (hb_thread, guard_thread)):
                thread.join(timeout=5)
            for s in (tasks, results, control):
                if s is not None:
                    s.close()
            if early is not None:
                early.close(linger=0)  # never used: nothing to deliver

    def _should_exit(self) -> bool:
        return self._terminate or links.parent_gone(self.options.parent_pid)

    def _socket(self, kind: int) -> zmq.Socket[Any]:
        sock = self._ctx.socket(kind)
        if self._curve is not None:
            curve.setup_client(sock, self._curve)
        return sock

    def _handshake(self, tasks: zmq.Socket[Any], guard: ReplayGuard) -> Joined | Refused | None:
        return join(self, tasks, lambda frames: self._decode(frames, guard, self.key))

    def _heartbeat_loop(
        self, endpoint: str, interval: float, key: bytes | SessionKey, sender: str
    ) -> None:
        sock = self._socket(zmq.PUSH)
        try:
            links.beat(sock, endpoint, self._hb_stop, interval, key, sender, self._status)
        finally:
            sock.close()

    def _status(self) -> tuple[int, dict[str, Any]]:
        # Called by the heartbeat thread every interval, also while a call runs.
        links.exit_if_orphaned(self.id, self.options.parent_pid)
        # Heartbeat numbers go on across sessions (see __init__).
        self._hb_seq += 1
        return self._hb_seq, self._id_and_counts()

    def _id_and_counts(self) -> dict[str, Any]:
        return {"id": self.id, "state": self._state, "task": self._current, "done": self._done}

    def _serve(
        self,
        tasks: zmq.Socket[Any],
        results: zmq.Socket[Any],
        control: zmq.Socket[Any],
        guard: ReplayGuard,
        lost_after: float,
    ) -> str:
        # Tasks run on this thread: send_message uses the results socket here
        # and nowhere else.
        self._results_sock = results
        self._serving_thread = threading.get_ident()
        current.serving = self
        try:
            with logforward.forwarding(self._forward_logs, self.send_message):
                return self._serve_loop(tasks, results, control, guard, lost_after)
        finally:
            current.serving = None
            self._results_sock = None

    def send_message(self, text: str, log: dict[str, Any] | None = None) -> bool:
        """Send a text (or a task's log record) to the controller, from the task thread."""
        sock = self._results_sock
        if sock is None or threading.get_ident() != self._serving_thread:
            return False
        text_msg = {"worker": self.id, "text": str(text), **({"log": log} if log else {})}
        frames = within(encode(Kind.MESSAGE, *self._signing(), text_msg), self._limit)
        sock.send_multipart(frames)
        return True

    def _serve_loop(
        self,
        tasks: zmq.Socket[Any],
        results: zmq.Socket[Any],
        control: zmq.Socket[Any],
        guard: ReplayGuard,
        lost_after: float,
    ) -> str:
        poller = zmq.Poller()
        poller.register(tasks, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        arrived = links.news(tasks, control)
        wake = self._drain.wake_fd
        if wake is not None:
            poller.register(wake, zmq.POLLIN)  # a signal ends the idle wait
        keys = {tasks: self._skey, control: self._pub_key}
        last_heard = time.monotonic()
        batch = self.marks.held  # emptied in place, never replaced: the guard reads it
        batch.clear()
        busy = 0.0  # seconds spent in calls for the results in `batch`
        # One clock here: read after the sockets are, and after each call.
        now = next_ingest = next_peek = time.perf_counter()
        next_status = now + self._status_every
        foreign = False  # broadcasts came that our controller did not sign
        served = False
        parent_check = Every(PARENT_CHECK_SECONDS)
        # Looked up once, not per task: the marks' sets are only ever changed
        # in place, and the options do not change.
        watched, doomed = self.marks.watched, self.marks.doomed
        recycles = self.options.max_tasks is not None or self.options.max_memory is not None

        def ingest(timeout_ms: int) -> None:
            nonlocal last_heard, foreign
            for sock, _ in poller.poll(timeout_ms):
                if sock == wake:
                    self._drain.woken()
                    continue
                while True:
                    try:
                        frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    msg = self._decode(frames, guard, keys[sock])
                    if msg is None:
                        # A new controller on the address signs its broadcasts
                        # with another key: they land here, and the silence of
                        # ours ends the session (after heartbeat_misses beats).
                        foreign = foreign or sock is control
                        continue
                    if msg.kind == Kind.HEARTBEAT and not self._from_our_controller(msg):
                        continue
                    last_heard = time.monotonic()
                    if not self._handle(msg):
                        self.dropped["malformed"] += 1

        def peek(at: float) -> bool:
            nonlocal next_peek
            next_peek = at + PEEK_SECONDS
            return bool(arrived(0))

        while True:
            if not self._queue or now >= next_ingest or (now >= next_peek and peek(now)):
                ingest(0 if self._queue or self._recycle else IDLE_POLL_MS)
                now = time.perf_counter()
                next_ingest, next_peek = now + INGEST_SECONDS, now + PEEK_SECONDS
            if now >= next_status:
                # Behind every result sent so far, on the same connection.
                next_status = now + self._status_every
                held = holding(self._id_and_counts(), self._queue, batch, self._tasks_seq)
                results.send_multipart(encode(Kind.HEARTBEAT, *self._signing(), held))
            if self._terminate or self._stop_requested or self._recycle:
                break
            if parent_check.due(now) and self._should_exit():
                self._terminate = True
                break
            if self._other_controller:
                log.warning("worker %s: another controller now holds the address", self.id)
                return "lost"
            if not self._queue:
                self.marks.watched.clear()  # what is left was cancelled
                if batch:
                    self._flush(results, batch, busy)
                    batch.clear()
                # Silent, and another controller on the address or our
                # connection closed (its pings went unanswered): a controller
                # busy with a large message still answers them.
                silent = time.monotonic() - last_heard > lost_after
                if silent and (foreign or not links.connected(tasks)):
                    log.warning("worker %s: controller silent for %.1f s", self.id, lost_after)
                    return "lost"
                continue
            task_id, spec_id, arg, last = self._queue.popleft()
            served = True
            if batch and watched and self.marks.flush_first(task_id):
                self._flush(results, batch, busy)
                batch.clear()
            if not batch:
                busy = 0.0
            # Claimed before the check, committed (busy) after it: a guard
            # that dooms the task after this check then reads it as ours
            # (see guard.py), so it needs no periodic look to catch it.
            self._current = task_id
            if task_id in doomed:
                self._current = None
                continue  # cancelled with force before it started
            t0 = time.perf_counter()
            batch.append(self._run_one(task_id, spec_id, arg))
            now = time.perf_counter()
            busy += now - t0
            if recycles:
                self._recycle = self._recycle or recycle_reason(self.options, self._done)
            # Results go back as their message's tasks are done (the
            # controller sized that message), so its slot frees at once and a
            # large result is not held while the next task runs.
            if (
                last
                or self._recycle
                or not self._queue
                or len(batch) >= RESULT_BATCH_MAX
                or busy > RESULT_BATCH_SECONDS
            ):
                self._flush(results, batch, busy)
                batch.clear()
        if batch:
            self._flush(results, batch, busy)
        # Leaving: whatever was prefetched goes back to the controller.
        returned = [t[0] for t in self._queue]
        self._queue.clear()
        bye = Bye(self.id, returned).header()
        results.send_multipart(encode(Kind.BYE, *self._signing(), bye))
        why = f" ({self._recycle}), to be replaced" if self._recycle else ""
        log.info("worker %s: leaving%s, %d task(s) handed back", self.id, why, len(returned))
        if self._terminate or self._recycle:
            return "exit"
        self._stop_requested = False
        return "served" if served else "lost"

    def _from_our_controller(self, msg: Any) -> bool:
        # Another one: whatever it holds of ours died with the old
        # controller; it does not know us: start over with a hello.
        other = links.from_another_controller(msg.header, self._controller_id)
        self._other_controller = self._other_controller or other
        return not other

    def _handle(self, msg: Any) -> bool:
        """Act on a checked message; False if its content makes no sense."""
        hdr = msg.header if isinstance(msg.header, dict) else {}
        handle = self._on_kind.get(msg.kind)
        if handle is None:
            self.dropped["unexpected"] += 1
            return True
        return handle(msg, hdr)

    def _on_tasks(self, msg: Any, hdr: dict[str, Any]) -> bool:
        # Received, even if unusable: the next status tells the controller
        # that these tasks are not held here.
        self._tasks_seq = msg.seq
        queued = task_entries(hdr.get("spec"), msg.payload)
        self._queue.extend(queued or ())
        self.marks.watch(hdr, queued)
        return queued is not None

    def _run_one(self, task_id: int, spec_id: str, arg: Any) -> Outcome:
        """Run the task claimed as ``_current``; it is no longer current after."""
        call = self._funcs.get(spec_id)
        if call is None:
            self._current = None
            err = RuntimeError(f"function spec {spec_id} was never received")
            return (task_id, False, describe_exception(err))
        self._state = "busy"
        try:
            return (task_id, True, call(arg))
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            # sys.exit() in a task fails that task; it does not end the worker.
            # Nor does KeyboardInterrupt: no signal raises it here (a local
            # worker ignores SIGINT, a daemon drains on it), so it is the task's.
            return (task_id, False, describe_exception(exc))
        finally:
            self._done += 1
            self._state = "idle"
            self._current = None

    def _flush(self, results: zmq.Socket[Any], batch: list[Outcome], busy: float) -> None:
        for frames in result_messages(batch, busy, self._limit, self._signing):
            results.send_multipart(frames, copy=False)


def on_stop(worker: Worker, hdr: dict[str, Any]) -> bool:
    """A STOP: leave after the current call (all workers, or this one)."""
    if hdr.get("worker") in (None, worker.id):
        worker._stop_requested = True
        # Declared lost while it was alive (a cut link): leave the
        # session and say hello again, local worker or daemon.
        worker._rejoin = hdr.get("rejoin") is True
    return True
