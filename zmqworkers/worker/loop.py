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
import logging
import os
import pickle
import secrets
import signal
import socket as pysocket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from zmqworkers._version import __version__
from zmqworkers.errors import DecodeError, ProtocolVersionError
from zmqworkers.protocol import (
    PROTOCOL_VERSION,
    Kind,
    ReplayGuard,
    SessionKey,
    decode,
    derive_key,
    encode,
)
from zmqworkers.protocol.liveness import HEARTBEAT_INTERVAL, HEARTBEAT_MISSES
from zmqworkers.protocol.messages import DEFAULT_MAX_MESSAGE_SIZE, NONCE_SIZE
from zmqworkers.security import curve
from zmqworkers.security.connection import is_local_link
from zmqworkers.worker.silence import EXIT_NO_CONTROLLER, SilenceReport

log = logging.getLogger(__name__)

_AUTH_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL

# A result batch is sent once it holds this many results, is this old, or
# the worker has nothing queued: tiny tasks share messages, a slow task's
# result is never held back.
RESULT_BATCH_MAX = 256
RESULT_BATCH_SECONDS = 0.005
CONNECT_TIMEOUT_MS = 1000
# While no controller answers, reconnect attempts back off from ZeroMQ's
# 100 ms up to this, instead of knocking every 100 ms for ever.
RECONNECT_IVL_MAX_MS = 1000
# Exit status of a worker the controller refused for good (another version):
# a supervisor does not start it again.
EXIT_REFUSED = 3


@dataclass
class WorkerOptions:
    """How a worker behaves. Every interval is in seconds."""

    prefetch: int = 1
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    heartbeat_misses: int = HEARTBEAT_MISSES
    # A daemon goes back to waiting for a controller after a stop or a lost
    # controller; a local worker exits.
    daemon: bool = False
    # Exit when this process id is gone (local workers watch their controller).
    parent_pid: int | None = None
    # Daemon: exit after this long without a controller (None: never).
    death_timeout: float | None = None
    name: str | None = None
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    # CURVE directory and the name of this worker's certificate in it.
    curve_dir: str | None = None
    curve_name: str = curve.DEFAULT_WORKER
    # After SIGTERM the running call may finish for this long; then it is
    # handed back unfinished and the worker leaves. Below Kubernetes' default
    # 30 s grace period, so the goodbye goes out before SIGKILL comes.
    drain_timeout: float = 25.0


def _side_endpoint(address: str, hdr: dict[str, Any], name: str) -> str:
    """Where the welcome says the ``results`` or ``control`` channel is.

    A worker that dialled the controller's ipc address for local workers
    takes that channel's ipc address too; others take the port (or address)
    named for everyone.
    """
    local = hdr.get("ipc")
    if address.startswith("ipc://") and isinstance(local, dict):
        endpoint = local.get(name)
        if isinstance(endpoint, str) and endpoint.startswith("ipc://"):
            return endpoint
    return _format_endpoint(address, hdr[name])


def _format_endpoint(address: str, port_or_endpoint: Any) -> str:
    if isinstance(port_or_endpoint, str):
        return port_or_endpoint
    head, _, _ = address.rpartition(":")
    return f"{head}:{int(port_or_endpoint)}"


class FunctionCache:
    """Function specs by id.

    The controller decides what a worker holds: it tracks the specs it sent
    and names in a later FUNC's ``forget`` those no queued task needs. The
    cache never drops a spec by itself, since it cannot know whether a task
    already queued here still needs it.
    """

    def __init__(self) -> None:
        self._specs: dict[str, Callable[[Any], Any]] = {}

    def __contains__(self, spec_id: str) -> bool:
        return spec_id in self._specs

    def __len__(self) -> int:
        return len(self._specs)

    def add(self, spec_id: str, spec: Any) -> None:
        self._specs[spec_id] = make_call(spec)

    def forget(self, spec_ids: Any) -> None:
        for spec_id in spec_ids if isinstance(spec_ids, list) else ():
            if isinstance(spec_id, str):
                self._specs.pop(spec_id, None)

    def get(self, spec_id: str) -> Callable[[Any], Any] | None:
        return self._specs.get(spec_id)


def make_call(spec: Any) -> Callable[[Any], Any]:
    """Turn a decoded function spec into ``call(task) -> result``.

    Conventions: ``"task"`` calls ``func(task, *args, **kwargs)`` (the seed's
    convention); ``"call"`` takes the task as ``(args, kwargs)`` (``submit``);
    ``"app"`` builds the app once and calls ``app.multiprocessing_func(task)``.
    """
    convention, func, args, kwargs = spec
    if convention == "task":
        if not args and not kwargs:
            return func  # type: ignore[no-any-return]
        return lambda task: func(task, *args, **kwargs)
    if convention == "call":
        return lambda task: func(*task[0], **task[1])
    if convention == "app":
        from zmqworkers.client.apps import app_call

        return app_call(func, *args, **kwargs)
    raise ValueError(f"unknown calling convention {convention!r}")


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """A structured, always-picklable description of a raised exception."""
    exc_bytes: bytes | None
    try:
        data = pickle.dumps(exc, protocol=5)
        pickle.loads(data)  # an exception that cannot come back is left out
        exc_bytes = data
    except Exception:
        exc_bytes = None
    return {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "exc": exc_bytes,
    }


class _ControllerLost(Exception):
    pass


# The worker serving in this process, so code running inside a task can reach
# its controller (send_message); None outside a worker.
_serving: Worker | None = None


def send_message(text: str) -> bool:
    """Send ``text`` to the controller from inside a running task.

    The controller reports it as the event ``"message"`` (the Qt face emits
    ``sig_message_from_worker``). Returns False when not called from a task
    running on a worker, so code can run serially too.
    """
    worker = _serving
    if worker is None:
        return False
    return worker.send_message(text)


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
        self._seq = time.time_ns() // 1_000_000
        self._result_seq = 0
        self._result_sender = f"{self.id}/r"
        self._hb_sender = f"{self.id}/hb"
        # Set per session from the controller's welcome: the key that signs
        # everything after the hello, and the one of the broadcast channel.
        self._skey: bytes | SessionKey = key
        self._pub_key = key
        self._funcs = FunctionCache()
        # (task id, spec id, argument, last of its message)
        self._queue: collections.deque[tuple[int, str, Any, bool]] = collections.deque()
        self._stop_requested = False  # by the controller (STOP)
        self._rejoin = False  # ... asking for a new hello
        self._terminate = False  # by a signal: drain and leave for good
        self._hb_stop = threading.Event()
        # Heartbeat numbers go on across sessions: a controller that saw this
        # worker before refuses numbers it has seen as replays.
        self._hb_seq = 0
        self._results_ep: str | None = None
        self._drain_started = False
        self._controller_id: str | None = None
        # Set when heartbeats of another controller arrive: a new one bound
        # the address after ours died, and the session must start over.
        self._other_controller = False
        self._state = "idle"
        self._current: int | None = None
        self._done = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self._results_sock: zmq.Socket[Any] | None = None
        self._serving_thread: int | None = None
        self.refused: str | None = None
        self._waiting_since = time.monotonic()

    # -- signals ----------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def on_term(signum: int, frame: Any) -> None:
            if self._terminate and self._drain_started:
                log.warning("worker %s: signal %d again, leaving now", self.id, signum)
                self._leave_now()
            log.info("worker %s: got signal %d, draining", self.id, signum)
            self._terminate = True
            if not self._drain_started:
                self._drain_started = True
                threading.Thread(
                    target=self._drain_watchdog, name="zmqworkers-drain", daemon=True
                ).start()

        signal.signal(signal.SIGTERM, on_term)
        # Ctrl-C in the user's terminal reaches every process of the group;
        # a local worker lets its controller decide when to stop it.
        if self.options.parent_pid is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGINT, on_term)

    def _drain_watchdog(self) -> None:
        deadline = time.monotonic() + self.options.drain_timeout
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if self._current is None and self._state == "idle" and self._hb_stop.is_set():
                return  # the main thread left by itself
        if self._current is not None:
            log.warning(
                "worker %s: task %s still running after the %.1f s drain timeout",
                self.id,
                self._current,
                self.options.drain_timeout,
            )
            self._leave_now()

    def _leave_now(self) -> None:
        """Hand back the running call and everything queued, then exit.

        Runs off the main thread (which is stuck in the call), so it uses a
        context and socket of its own.
        """
        returned = [t[0] for t in list(self._queue)]
        if self._current is not None:
            returned.insert(0, self._current)
        ep = self._results_ep
        if ep is not None:
            # A context of its own: its term() below waits until the goodbye
            # is out, without touching the sockets other threads use. Signed
            # with the session key, under a sender name of this session.
            ctx = zmq.Context()
            sock = ctx.socket(zmq.PUSH)
            if self._curve is not None:
                curve.setup_client(sock, self._curve)
            sock.setsockopt(zmq.LINGER, 1000)
            sock.connect(ep)
            frames = encode(
                Kind.BYE,
                f"{self._result_sender.rpartition('/')[0]}/drain",
                1,
                self._skey,
                {"id": self.id, "returned": returned},
            )
            sock.send_multipart(frames)
            sock.close()
            ctx.term()  # waits (up to the linger) until the goodbye is out
        log.info("worker %s: left mid-call, %d task(s) handed back", self.id, len(returned))
        os._exit(0)

    # -- main -------------------------------------------------------------

    def run(self) -> int:
        """Serve controllers; 0 when done, 3 when the controller's protocol differs."""
        try:
            return self._run()
        except ProtocolVersionError as exc:
            log.error(
                "worker %s: worker speaks protocol %d, controller %d: install the same "
                "zmqworkers release on both sides",
                self.id,
                exc.ours,
                exc.theirs,
            )
            return 3

    def _run(self) -> int:
        backoff = 0.1
        waited_since = self._waiting_since = time.monotonic()
        try:
            while True:
                try:
                    outcome = self._session()
                except ProtocolVersionError as exc:
                    # The controller's answer (a refusal, most likely) is in a
                    # protocol this worker cannot read: say both versions.
                    self.refused = (
                        f"worker speaks protocol {exc.ours}, controller {exc.theirs}: "
                        "install the same zmqworkers release on both sides (this "
                        f"worker runs zmqworkers {__version__})"
                    )
                    log.error("worker %s: refused: %s", self.id, self.refused)
                    return EXIT_REFUSED
                if self.refused is not None:
                    return EXIT_REFUSED
                if self._rejoin and not self._terminate and not self._should_exit():
                    self._rejoin = False
                    continue
                if outcome == "exit" or self._terminate or not self.options.daemon:
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
            self._ctx.destroy(linger=0)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _next_result_seq(self) -> int:
        self._result_seq += 1
        return self._result_seq

    def _decode(self, frames: list[Any], guard: ReplayGuard, key: bytes | SessionKey) -> Any:
        try:
            msg = decode(frames, key, max_size=self.options.max_message_size)
            guard.check(msg.sender, msg.seq)
            return msg
        except DecodeError as exc:
            self.dropped[exc.reason] += 1
            if self.dropped[exc.reason] in (1, 10, 100, 1000, 10000):
                log.warning("worker %s: dropped a message (%s)", self.id, exc)
            if exc.reason == "version":
                raise
            return None

    def _session(self) -> str:
        """Serve one controller. Returns "exit", "served" or "lost"."""
        opts = self.options
        tasks = self._socket(zmq.DEALER)
        tasks.setsockopt(zmq.LINGER, 0)
        tasks.setsockopt(zmq.IMMEDIATE, 1)  # never queue a hello for nobody
        # A fresh routing id per session: nobody can guess it to take over
        # this worker's place at the controller.
        tasks.setsockopt(zmq.ROUTING_ID, f"{self.id}/{secrets.token_hex(8)}".encode())
        tasks.setsockopt(zmq.MAXMSGSIZE, opts.max_message_size)
        # A connect whose SYNs went into a cut link would otherwise wait for
        # the kernel's SYN backoff (seconds, growing); retry it afresh.
        tasks.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
        tasks.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        tasks.connect(self.address)
        results: zmq.Socket[Any] | None = None
        control: zmq.Socket[Any] | None = None
        hb_thread: threading.Thread | None = None
        guard = ReplayGuard()
        try:
            welcome = self._handshake(tasks, guard)
            if welcome is None:
                return "exit" if self._should_exit() else "lost"
            if welcome.kind == Kind.REFUSED:
                hdr = welcome.header if isinstance(welcome.header, dict) else {}
                reason = str(hdr.get("reason", welcome.header))
                if hdr.get("fatal"):
                    log.error("worker %s: refused by controller: %s", self.id, reason)
                    self.refused = reason
                    return "exit"
                # Not for good (the controller is shutting down): a daemon
                # waits for the next one.
                log.info("worker %s: not accepted now: %s", self.id, reason)
                return "lost" if self.options.daemon else "exit"
            hdr = welcome.header
            results_ep = _side_endpoint(self.address, hdr, "results")
            results = self._socket(zmq.PUSH)
            results.setsockopt(zmq.LINGER, 2000)
            results.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
            results.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            results.connect(results_ep)
            control = self._socket(zmq.SUB)
            control.setsockopt(zmq.LINGER, 0)
            control.setsockopt(zmq.SUBSCRIBE, b"")
            control.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
            control.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
            control.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            control.connect(_side_endpoint(self.address, hdr, "control"))
            # Broadcasts published before this welcome are not for us: a
            # replayed old STOP is refused like any other replay.
            guard.check(f"{hdr['controller']}/pub", hdr["pub_seq"])
            self._results_ep = results_ep
            self._controller_id = hdr.get("controller")
            self._other_controller = False
            interval = float(hdr.get("heartbeat_interval", opts.heartbeat_interval))
            misses = int(hdr.get("heartbeat_misses", opts.heartbeat_misses))
            self._hb_stop.clear()
            hb_thread = threading.Thread(
                target=self._heartbeat_loop,
                args=(
                    results_ep,
                    interval,
                    self._skey,
                    self._hb_sender,
                ),
                name="zmqworkers-heartbeat",
                daemon=True,
            )
            hb_thread.start()
            log.info("worker %s: joined controller %s", self.id, hdr.get("controller"))
            return self._serve(tasks, results, control, guard, interval * misses)
        finally:
            self._hb_stop.set()
            self._results_ep = None
            if hb_thread is not None:
                hb_thread.join(timeout=5)
            for s in (tasks, results, control):
                if s is not None:
                    s.close()

    def _should_exit(self) -> bool:
        if self._terminate:
            return True
        ppid = self.options.parent_pid
        return ppid is not None and not _pid_alive(ppid)

    def _socket(self, kind: int) -> zmq.Socket[Any]:
        sock = self._ctx.socket(kind)
        if self._curve is not None:
            curve.setup_client(sock, self._curve)
        return sock

    def _handshake(self, tasks: zmq.Socket[Any], guard: ReplayGuard) -> Any:
        nonce = secrets.token_bytes(NONCE_SIZE)
        hello = {
            "id": self.id,
            "host": self.host,
            "pid": os.getpid(),
            "protocol": PROTOCOL_VERSION,
            "version": __version__,
            "capacity": 1 + max(0, self.options.prefetch),
            "nonce": nonce,
            # Nothing on this link can change bytes in transit (loopback,
            # ipc, CURVE): array buffers may skip hashing if the controller
            # says the same of its side.
            "link_protected": self._curve is not None or is_local_link(self.address),
            "dialled": self.address,
        }
        poller = zmq.Poller()
        poller.register(tasks, zmq.POLLIN)
        # Under CURVE a refused key shows only as failed handshakes: watch
        # for them, so the operator learns why this worker never joins.
        monitor = tasks.get_monitor_socket(_AUTH_FAILURES) if self._curve else None
        if monitor is not None:
            poller.register(monitor, zmq.POLLIN)
        try:
            return self._say_hello(tasks, guard, hello, nonce, poller, monitor)
        finally:
            if monitor is not None:
                tasks.disable_monitor()
                monitor.close(linger=0)

    def _say_hello(
        self,
        tasks: zmq.Socket[Any],
        guard: ReplayGuard,
        hello: dict[str, Any],
        nonce: bytes,
        poller: zmq.Poller,
        monitor: zmq.Socket[Any] | None,
    ) -> Any:
        sent = False
        deadline = time.monotonic() + 2.0
        refusals = 0
        dt = self.options.death_timeout
        opts = self.options
        silence = SilenceReport(
            self.address, time.monotonic(), opts.heartbeat_interval * opts.heartbeat_misses
        )
        while not self._should_exit():
            why = silence.due(time.monotonic())
            if why is not None:
                log.warning("worker %s: %s", self.id, why)
            # No controller at all (nobody listening) must end a daemon
            # after its death timeout too, not only between controllers.
            if dt is not None and time.monotonic() - self._waiting_since > dt:
                return None
            if not sent:
                try:
                    frames = encode(Kind.HELLO, self.id, self._next_seq(), self.key, hello)
                    tasks.send_multipart(frames, flags=zmq.NOBLOCK)
                    sent = silence.connected = True
                    deadline = time.monotonic() + 2.0
                except zmq.Again:
                    pass
            # Until the hello is out, wake as soon as the connection is up
            # (POLLOUT), not after a fixed pause: this is on the path to the
            # first result.
            poller.modify(tasks, zmq.POLLIN if sent else zmq.POLLIN | zmq.POLLOUT)
            events = dict(poller.poll(100))
            if monitor is not None and events.get(monitor):
                monitor.recv_multipart()  # a failed CURVE handshake: what it says is known
                refusals += 1
                if refusals & (refusals - 1) == 0:
                    log.error(
                        "worker %s: the controller at %s refuses this worker's CURVE key "
                        "(%d handshake(s)); copy %s.key into its authorized_workers folder",
                        self.id,
                        self.address,
                        refusals,
                        self.options.curve_name,
                    )
            if events.get(tasks, 0) & zmq.POLLIN:
                msg = self._decode(tasks.recv_multipart(copy=False), guard, self.key)
                if msg is None or msg.kind not in (Kind.WELCOME, Kind.REFUSED):
                    continue
                if not self._start_session(msg, nonce):
                    self.dropped["stale"] += 1  # an answer to another hello
                    continue
                return msg
            if sent and time.monotonic() > deadline:
                # The hello went to a connection that has since gone: say it again.
                sent = False
        return None

    def _start_session(self, msg: Any, nonce: bytes) -> bool:
        """Check an answer to our hello; on a welcome, set up the session keys."""
        hdr = msg.header
        if not isinstance(hdr, dict) or hdr.get("nonce") != nonce:
            return False
        if msg.kind == Kind.REFUSED:
            return True
        ours, pub_nonce = hdr.get("session"), hdr.get("pub_nonce")
        if not isinstance(ours, bytes) or not isinstance(pub_nonce, bytes):
            return False
        fields_ok = (
            isinstance(hdr.get("controller"), str)
            and isinstance(hdr.get("pub_seq"), int)
            and isinstance(hdr.get("results"), int | str)
            and isinstance(hdr.get("control"), int | str)
        )
        if not fields_ok:
            return False
        # Buffers go unhashed only if this side asked for it in its hello.
        unhashed = hdr.get("sign_buffers") is False and (
            self._curve is not None or is_local_link(self.address)
        )
        self._skey = SessionKey(
            derive_key(self.key, b"session", nonce, ours), sign_buffers=not unhashed
        )
        self._pub_key = derive_key(self.key, b"pub", pub_nonce)
        self._result_sender = f"{self.id}@{ours.hex()}/r"
        self._hb_sender = f"{self.id}@{ours.hex()}/hb"
        return True

    def _heartbeat_loop(
        self, endpoint: str, interval: float, key: bytes | SessionKey, sender: str
    ) -> None:
        sock = self._socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 4)
        sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        sock.connect(endpoint)
        try:
            while not self._hb_stop.is_set():
                self._hb_seq += 1
                seq = self._hb_seq
                header = {
                    "id": self.id,
                    "state": self._state,
                    "task": self._current,
                    "done": self._done,
                }
                frames = encode(Kind.HEARTBEAT, sender, seq, key, header)
                try:
                    sock.send_multipart(frames, flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
                self._hb_stop.wait(interval)
                self._end_if_orphaned()
        finally:
            sock.close()

    def _end_if_orphaned(self) -> None:
        """A local worker whose controller died ends itself, even mid-call.

        The main thread checks only between tasks; a call that never
        returns would otherwise keep running with no one to take its result.
        """
        ppid = self.options.parent_pid
        if ppid is not None and not _pid_alive(ppid):
            log.warning("worker %s: controller process %d is gone, exiting", self.id, ppid)
            os._exit(1)

    def _serve(
        self,
        tasks: zmq.Socket[Any],
        results: zmq.Socket[Any],
        control: zmq.Socket[Any],
        guard: ReplayGuard,
        lost_after: float,
    ) -> str:
        global _serving
        # Tasks run on this thread: send_message uses the results socket here
        # and nowhere else.
        self._results_sock = results
        self._serving_thread = threading.get_ident()
        _serving = self
        try:
            return self._serve_loop(tasks, results, control, guard, lost_after)
        finally:
            _serving = None
            self._results_sock = None

    def send_message(self, text: str) -> bool:
        """Send a text to the controller; only from the thread running the tasks."""
        sock = self._results_sock
        if sock is None or threading.get_ident() != self._serving_thread:
            return False
        frames = encode(
            Kind.MESSAGE,
            self._result_sender,
            self._next_result_seq(),
            self._skey,
            {"worker": self.id, "text": str(text)},
        )
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
        keys = {tasks: self._skey, control: self._pub_key}
        last_heard = time.monotonic()
        batch: list[tuple[int, bool, Any]] = []
        batch_started = 0.0
        busy = 0.0  # seconds spent in calls for the results in `batch`
        served = False

        def ingest(timeout_ms: int) -> None:
            nonlocal last_heard
            for sock, _ in poller.poll(timeout_ms):
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
                        continue
                    if msg.kind == Kind.HEARTBEAT and not self._from_our_controller(msg):
                        continue
                    last_heard = time.monotonic()
                    if not self._handle(msg):
                        self.dropped["malformed"] += 1

        while True:
            ingest(0 if self._queue else 100)
            if self._terminate or self._stop_requested:
                break
            if self._should_exit():
                self._terminate = True
                break
            if self._other_controller:
                log.warning("worker %s: another controller now holds the address", self.id)
                return "lost"
            if not self._queue:
                if batch:
                    self._flush(results, batch, busy)
                    batch = []
                if time.monotonic() - last_heard > lost_after:
                    log.warning("worker %s: controller silent for %.1f s", self.id, lost_after)
                    return "lost"
                continue
            task_id, spec_id, arg, last = self._queue.popleft()
            served = True
            if not batch:
                batch_started = time.monotonic()
                busy = 0.0
            t0 = time.perf_counter()
            batch.append(self._run_one(task_id, spec_id, arg))
            busy += time.perf_counter() - t0
            # Results go back as their message's tasks are done (the
            # controller sized that message), so its slot frees at once and a
            # large result is not held while the next task runs.
            if (
                last
                or not self._queue
                or len(batch) >= RESULT_BATCH_MAX
                or time.monotonic() - batch_started > RESULT_BATCH_SECONDS
            ):
                self._flush(results, batch, busy)
                batch = []
        if batch:
            self._flush(results, batch, busy)
        # Leaving: whatever was prefetched goes back to the controller.
        returned = [t[0] for t in self._queue]
        self._queue.clear()
        frames = encode(
            Kind.BYE,
            self._result_sender,
            self._next_result_seq(),
            self._skey,
            {"id": self.id, "returned": returned},
        )
        results.send_multipart(frames)
        log.info("worker %s: leaving, %d task(s) handed back", self.id, len(returned))
        if self._terminate:
            return "exit"
        self._stop_requested = False
        return "served" if served else "lost"

    def _from_our_controller(self, msg: Any) -> bool:
        hdr = msg.header
        theirs = hdr.get("controller") if isinstance(hdr, dict) else None
        if theirs is not None and self._controller_id is not None and theirs != self._controller_id:
            # Whatever it holds of ours died with the old controller; it
            # does not know us: start over with a hello.
            self._other_controller = True
            return False
        return True

    def _handle(self, msg: Any) -> bool:
        """Act on a checked message; False if its content makes no sense."""
        kind = msg.kind
        hdr = msg.header if isinstance(msg.header, dict) else {}
        if kind == Kind.TASKS:
            spec_id, items = hdr.get("spec"), msg.payload
            if not isinstance(spec_id, str) or not isinstance(items, list):
                return False
            # Checked whole first: a batch is taken entirely or not at all.
            if not all(isinstance(t, tuple) and len(t) == 2 and type(t[0]) is int for t in items):
                return False
            end = len(items) - 1
            self._queue.extend(
                (task_id, spec_id, arg, i == end) for i, (task_id, arg) in enumerate(items)
            )
        elif kind == Kind.FUNC:
            spec, spec_id = msg.payload, hdr.get("spec")
            if not isinstance(spec_id, str) or not (isinstance(spec, tuple) and len(spec) == 4):
                return False
            self._funcs.forget(hdr.get("forget"))
            try:
                self._funcs.add(spec_id, spec)
            except ValueError:
                return False
        elif kind == Kind.STOP:
            if hdr.get("worker") in (None, self.id):
                self._stop_requested = True
                # Declared lost while it was alive (a cut link): leave the
                # session and say hello again, local worker or daemon.
                self._rejoin = hdr.get("rejoin") is True
        elif kind != Kind.HEARTBEAT:  # a heartbeat only updates last_heard
            self.dropped["unexpected"] += 1
        return True

    def _run_one(self, task_id: int, spec_id: str, arg: Any) -> tuple[int, bool, Any]:
        call = self._funcs.get(spec_id)
        if call is None:
            err = RuntimeError(f"function spec {spec_id} was never received")
            return (task_id, False, describe_exception(err))
        self._state = "busy"
        self._current = task_id
        try:
            return (task_id, True, call(arg))
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            # sys.exit() in a task fails that task; it does not end the worker.
            # Nor does KeyboardInterrupt: no SIGINT raises it here (a local
            # worker ignores SIGINT, a daemon drains on it), so it is the
            # task's own.
            return (task_id, False, describe_exception(exc))
        finally:
            self._done += 1
            self._state = "idle"
            self._current = None

    def _flush(
        self, results: zmq.Socket[Any], batch: list[tuple[int, bool, Any]], busy: float
    ) -> None:
        # The controller sizes later batches from the time the calls took.
        header = {"busy": busy, "n": len(batch)}
        try:
            frames = encode(
                Kind.RESULTS,
                self._result_sender,
                self._next_result_seq(),
                self._skey,
                header,
                batch,
                has_payload=True,
            )
        except Exception:
            # One unpicklable result must not take its batch-mates with it.
            frames = encode(
                Kind.RESULTS,
                self._result_sender,
                self._next_result_seq(),
                self._skey,
                header,
                [_picklable(item) for item in batch],
                has_payload=True,
            )
        results.send_multipart(frames, copy=False)


def _picklable(item: tuple[int, bool, Any]) -> tuple[int, bool, Any]:
    from zmqworkers.protocol import dumps

    try:
        dumps(item[2])
        return item
    except Exception as exc:
        err = TypeError(f"the result of task {item[0]} cannot be pickled: {exc}")
        return (item[0], False, describe_exception(err))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie parent (exited, not yet reaped) still answers kill(0);
    # being re-parented is the surer sign.
    return os.getppid() == pid
