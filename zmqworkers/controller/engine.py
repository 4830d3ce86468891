"""The controller engine: one thread owns every controller socket.

::

   caller threads (Cluster, WorkerController, Qt slots)
        │  commands (queue.SimpleQueue) + one byte on a wake pipe
        ▼
   ┌─────────────────────── engine thread ───────────────────────────┐
   │  zmq.Poller over: wake pipe, ROUTER (tasks), PULL (results)     │
   │  Scheduler (pure): pending queue, in-flight per worker          │
   │  liveness: heartbeats, local process exits                      │
   └──┬──────────────────────────┬───────────────────────┬───────────┘
      │ ROUTER ⇄ DEALER          │ PULL ◀── PUSH          │ PUB ──▶ SUB
      │ HELLO/WELCOME, FUNC,     │ RESULTS, BYE,          │ HEARTBEAT,
      │ TASKS, STOP              │ HEARTBEAT, MESSAGE     │ STOP (broadcast)
      ▼                          ▼                        ▼
   workers: local subprocesses on loopback, or daemons on other hosts

Results reach the caller through ``EngineHandler`` callbacks, run on the
engine thread: ``Cluster`` completes futures there, the Qt face emits
signals (queued across threads by Qt).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import queue
import secrets
import shutil
import socket as pysocket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import zmq

from zmqworkers._version import __version__
from zmqworkers.controller.launcher import describe_exit, start_local_worker
from zmqworkers.controller.scheduler import Scheduler, WorkerState
from zmqworkers.errors import (
    ConfigurationError,
    DecodeError,
    ProtocolVersionError,
    make_remote_error,
)
from zmqworkers.protocol import (
    PROTOCOL_VERSION,
    Kind,
    ReplayGuard,
    SessionKey,
    decode,
    derive_key,
    encode,
    encode_frames,
)
from zmqworkers.protocol.liveness import Heartbeat, describe_silence
from zmqworkers.protocol.messages import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_SENDER_LENGTH,
    NONCE_SIZE,
    encode_unsigned,
    library_compatible,
    peek_version,
)
from zmqworkers.protocol.serialize import dumps
from zmqworkers.security import curve
from zmqworkers.security.cleanup import Leftovers
from zmqworkers.security.connection import check_bind_address, is_local_link
from zmqworkers.security.keys import INSECURE_KEY, resolve_key

log = logging.getLogger(__name__)

# Hellos waiting for their worker's first signed message: bounded, so replayed
# hellos cannot grow the controller's memory.
MAX_PENDING_SESSIONS = 4096
# Sessions of workers that left or were lost, kept so a late result of theirs
# is still delivered (the scheduler takes late results).
MAX_RETIRED_SESSIONS = 1024
# Messages queued per connection on the controller's receiving sockets: with
# max_message_size, bounds the memory one connection can make it hold.
RECEIVE_HWM = 1000


@dataclass
class EngineOptions:
    """Controller settings. Intervals and timeouts are in seconds."""

    n_workers: int = 0
    bind: str = "tcp://127.0.0.1:0"
    key: bytes = b""
    key_given: bool = False
    insecure: bool = False
    prefetch: int = 1
    # Both sides send a heartbeat every ``heartbeat_interval``; a peer silent
    # for ``heartbeat_interval * heartbeat_misses`` is lost. This catches hung
    # hosts and cut links; a dead process is seen at once (process watch for
    # local workers, connection watch for every worker).
    heartbeat_interval: float = 1.0
    heartbeat_misses: int = 3
    # A task that was running on this many workers that died fails with
    # WorkerLost instead of killing more.
    max_attempts: int = 3
    # Tiny tasks share messages: a worker whose tasks take less than this
    # (measured) gets batches worth about this much work per dispatch unit,
    # up to max_batch tasks. 0 turns batching off. A task measured slower
    # than this is always sent alone, so no slow task waits behind others.
    batch_target: float = 0.002
    max_batch: int = 512
    batch_bytes: int = 1 << 20  # ... and at most about this many payload bytes
    # Start a new local worker for each one that dies, so capacity holds.
    replace_dead_workers: bool = True
    # How often local worker processes are checked for exits.
    process_check_interval: float = 0.1
    # How long a stop waits for workers to finish their current call before
    # local processes are terminated.
    stop_timeout: float = 10.0
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    worker_env: dict[str, str] = field(default_factory=dict)
    # Written (mode 0600) once the sockets are bound: address, key, versions,
    # for daemons started with --connection-file on a shared filesystem.
    connection_file: str | None = None
    # CURVE directory (see zmqworkers.security.curve): encrypt, admit only known workers.
    curve_dir: str | None = None
    # Local workers dial ipc in a private folder (POSIX) rather than the TCP
    # address: measured faster for large arrays.
    local_ipc: bool = True
    # Out-of-band array buffers enter the signature by length only on links
    # that rule out changes in transit (loopback, ipc, CURVE) when the worker
    # agrees; True hashes them everywhere (for a plain TCP relay
    # that carries a loopback port across a network).
    sign_buffers: bool = False


@dataclass
class _Session:
    """One worker connection, from its hello to its leaving.

    ``key`` signs everything after the hello, both ways; ``tag`` (the
    controller's nonce, in hex) names the session in the worker's senders.
    """

    tag: str
    route: bytes
    key: SessionKey
    state: WorkerState
    expires: float
    worker_nonce: bytes = b""
    via_ipc: bool = False  # dialled the ipc folder of local workers
    joined: bool = False
    retired: bool = False


def build_options(
    *,
    key: str | bytes | None = None,
    key_file: str | os.PathLike[str] | None = None,
    prefetch: int = 1,
    curve_dir: str | os.PathLike[str] | None = None,
    connection_file: str | os.PathLike[str] | None = None,
    max_message_size: int | None = None,
    **rest: Any,
) -> EngineOptions:
    """Engine options from a face's keywords: one place for key and checks.

    The key is ``key``, else ``key_file``, else ``$ZMQWORKERS_KEY``, else a
    random one (``key_given`` then stays false, for the bind policy).
    """
    if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 0:
        raise ConfigurationError(f"prefetch must be a whole number >= 0, not {prefetch!r}")
    check_bind_address(rest.get("bind", EngineOptions.bind))
    explicit = resolve_key(key, key_file)
    options = EngineOptions(
        key=explicit or resolve_key(generate=True) or b"",
        key_given=explicit is not None,
        prefetch=prefetch,
        curve_dir=os.fspath(curve_dir) if curve_dir is not None else None,
        connection_file=os.fspath(connection_file) if connection_file is not None else None,
        **rest,
    )
    if max_message_size is not None:
        options.max_message_size = max_message_size
    return options


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


class EngineHandler(Protocol):
    """What the engine reports, called on the engine thread."""

    def on_results(self, results: list[tuple[int, bool, Any]]) -> None: ...

    def on_event(self, name: str, data: Any) -> None: ...


class Engine:
    """Runs the controller's event loop on a thread of its own."""

    def __init__(self, options: EngineOptions, handler: EngineHandler) -> None:
        self._check_security(options)
        self.options = options
        self.handler = handler
        self.id = f"ctl-{uuid.uuid4().hex[:8]}"
        self.host = pysocket.gethostname()
        self.address = ""
        self.endpoints: dict[str, str] = {}
        self.sched = Scheduler(max_attempts=options.max_attempts)
        self.dropped: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()
        self._id_lock = threading.Lock()
        self._next_id = 1
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._specs: dict[str, Spec] = {}
        # Per function spec: (seconds per task or None, payload bytes per task).
        self._spec_cost: dict[str, tuple[float | None, float]] = {}
        self._seq = 0
        self._pub_seq = 0
        self._guard = ReplayGuard()
        self._pending: OrderedDict[str, _Session] = OrderedDict()  # by worker id
        self._live: dict[str, _Session] = {}  # by worker id
        self._sessions: dict[str, _Session] = {}  # by tag: pending, live, retired
        self._retired: OrderedDict[str, _Session] = OrderedDict()  # by tag
        self._pub_nonce = secrets.token_bytes(NONCE_SIZE)
        self._pub_key = derive_key(options.key, b"pub", self._pub_nonce)
        # Whether every link to this controller is one nothing can change in
        # transit: all its sockets on loopback or ipc, or all under CURVE.
        self._link_protected = not options.sign_buffers and bool(
            options.curve_dir or is_local_link(options.bind)
        )
        self._auth: Any = None
        # The ipc folder of local workers (see _bind_local_ipc), if any.
        self.local_address = options.bind
        self._local_eps: dict[str, str] = {}
        self._leftovers = Leftovers()  # the ipc folder and connection file
        self._local: dict[int, subprocess.Popen[bytes]] = {}
        self._local_target = options.n_workers
        self._expected_exits: set[int] = set()
        self._replacements = 0
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._closing = False
        self._closed = threading.Event()
        self._snapshot: list[dict[str, Any]] = []
        self.heartbeat = Heartbeat(options.heartbeat_interval, options.heartbeat_misses)
        # Workers declared lost, and when each was last asked to say hello
        # again (if it turns out to be alive: a cut link that healed).
        self._lost_ids: dict[str, float] = {}
        self._probe_at: list[float] = []

    @staticmethod
    def _check_security(options: EngineOptions) -> None:
        """Apply the bind policy; fill in the key CURVE or insecure mode use."""
        if options.curve_dir:
            curve.server_keys(options.curve_dir)  # fail now, naming the file
            if not options.key_given:
                options.key = curve.hmac_key(options.curve_dir)
            options.worker_env.setdefault(curve.CURVE_ENV, str(options.curve_dir))
        if not options.key:
            raise ConfigurationError("the engine needs a key")
        # A connection file carries even a random key to the daemons.
        shared = options.key_given or options.curve_dir or options.connection_file
        if is_local_link(options.bind) or shared:
            return
        if not options.insecure:
            raise ConfigurationError(
                f"refusing to bind {options.bind} without a key: anyone who can reach "
                "that address could run code on your workers and in this process. "
                "Fix: give key= or key_file= (or set $ZMQWORKERS_KEY; make a key file "
                "with `zmqworkers keygen FILE` and give it to the workers with "
                "--key-file), or encrypt with curve_dir= (`zmqworkers keygen --curve "
                "DIR`), or bind 127.0.0.1; insecure=True (--insecure) skips this check "
                "on a network you trust completely"
            )
        options.key = INSECURE_KEY
        log.warning(
            "INSECURE: binding %s with the well-known insecure key; anyone who can "
            "reach it can run code on the workers and in this process",
            options.bind,
        )

    # -- caller side (any thread) -----------------------------------------

    def start(self, timeout: float = 30.0) -> str:
        """Bind the sockets, start local workers; return the task address."""
        self._thread = threading.Thread(target=self._run, name="zmqworkers-engine", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the controller engine did not start")
        if self._start_error is not None:
            raise self._start_error
        return self.address

    def new_task_ids(self, n: int) -> range:
        """Reserve ``n`` consecutive task ids (callers keep ranges, not lists)."""
        with self._id_lock:
            start = self._next_id
            self._next_id += n
        return range(start, start + n)

    def submit(self, spec: Spec, items: list[tuple[int, Any]]) -> None:
        self._command("submit", (spec, items))

    def cancel_many(self, task_ids: list[int]) -> None:
        """Drop these tasks if still queued (no answer; running ones finish)."""
        self._command("cancel_many", task_ids)

    def pause(self) -> None:
        self._command("pause", None)

    def resume(self) -> None:
        self._command("resume", None)

    def stop_workers(self) -> None:
        """Every worker finishes its current call, hands back the rest, leaves."""
        self._command("stop_workers", None)

    def start_workers(self, n: int | None = None) -> None:
        """Start (again) ``n`` local workers (default: the configured number)."""
        self._command("start_workers", n)

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` on the engine thread and return what it returns."""
        if threading.current_thread() is self._thread:
            # From a callback (a future's done-callback runs here): waiting
            # for ourselves would stall every heartbeat until the timeout.
            return fn()
        fut: Future[Any] = Future()
        self._command("call", (fn, fut))
        return fut.result(timeout)

    def workers(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """A snapshot of the connected workers."""
        if self._closed.is_set():
            return []
        return self.call(lambda: [w.snapshot() for w in self.sched.workers.values()], timeout)  # type: ignore[no-any-return]

    def counters(self, timeout: float = 10.0) -> dict[str, Any]:
        if self._closed.is_set():
            return {"dropped": dict(self.dropped), **dict(self.stats)}

        def read() -> dict[str, Any]:
            return {
                "queued": self.sched.queued,
                "running": sum(len(w.in_flight) for w in self.sched.workers.values()),
                "redispatched": self.sched.redispatched,
                "dropped": dict(self.dropped),
                **dict(self.stats),
            }

        return self.call(read, timeout)  # type: ignore[no-any-return]

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop workers (each finishes its current call) and close everything."""
        if self._thread is None or self._closed.is_set():
            return
        self._command("shutdown", None)
        self._thread.join(timeout if timeout is not None else self.options.stop_timeout + 10)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _command(self, name: str, arg: Any) -> None:
        if self._closed.is_set():
            raise RuntimeError("the controller engine is closed")
        self._commands.put((name, arg))
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the engine is awake already
        except OSError:
            pass  # closed under us by a shutdown in progress

    # -- engine thread ------------------------------------------------------

    def _close_sockets(self) -> None:
        router = getattr(self, "_router", None)
        if router is not None and getattr(self, "_monitor", None) is not None:
            try:
                router.disable_monitor()
            except zmq.ZMQError:
                pass
        for name in ("_monitor", "_router", "_pull", "_pub"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        ctx = getattr(self, "_ctx", None)
        if ctx is not None:
            ctx.term()
        self._leftovers.remove_all()

    def _bind(self) -> None:
        ctx = self._ctx = zmq.Context()
        opts = self.options
        self._router = ctx.socket(zmq.ROUTER)
        self._pull = ctx.socket(zmq.PULL)
        self._pub = ctx.socket(zmq.PUB)
        if opts.curve_dir:
            keys = curve.server_keys(opts.curve_dir)
            # The authenticator must listen before the first connection comes.
            self._auth = curve.start_authenticator(ctx, keys)
            for s in (self._router, self._pull, self._pub):
                curve.setup_server(s, keys)
        for s in (self._router, self._pull, self._pub):
            s.setsockopt(zmq.LINGER, 0)
        for s in (self._router, self._pull):
            s.setsockopt(zmq.MAXMSGSIZE, opts.max_message_size)
            s.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        # A send to a worker that has gone raises instead of vanishing.
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # No ROUTER_HANDOVER: each worker session connects with a fresh random
        # routing id, so a second connection claiming a live id is an
        # impostor trying to take over that worker's tasks, and is ignored.
        # A closed connection (a worker process died, or its host reset the
        # link) shows here at once, long before heartbeats would miss.
        self._monitor = self._router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        parts = urlsplit(opts.bind)
        if parts.scheme == "ipc":
            base = opts.bind
            self._router.bind(base)
            self._pull.bind(base + ".results")
            self._pub.bind(base + ".control")
            self._results_ep: Any = base + ".results"
            self._control_ep: Any = base + ".control"
        else:
            host = parts.hostname or "127.0.0.1"
            hostpart = f"[{host}]" if ":" in host else host
            port = parts.port or 0
            if port:
                eps = [f"tcp://{hostpart}:{port + i}" for i in range(3)]
            else:
                eps = [f"tcp://{hostpart}:*"] * 3
            self._router.bind(eps[0])
            self._pull.bind(eps[1])
            self._pub.bind(eps[2])
            self._results_ep = _port(self._pull)
            self._control_ep = _port(self._pub)
        self.address = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._bind_local_ipc()
        self.endpoints = {
            "tasks": self.address,
            "results": self._pull.getsockopt_string(zmq.LAST_ENDPOINT),
            "control": self._pub.getsockopt_string(zmq.LAST_ENDPOINT),
        }

    def _bind_local_ipc(self) -> None:
        """Also listen on ipc, in a private folder, for this host's own workers.

        Unix sockets carried 8 MiB array round trips about 9 % faster than
        loopback TCP here (docs/architecture.md). Local workers dial it;
        daemons keep the TCP address. The folder is mode 0700, so only this
        user (and root) can connect at all.
        """
        self.local_address = self.address
        opts = self.options
        if not (opts.local_ipc and opts.n_workers > 0 and self.address.startswith("tcp://")):
            return
        if os.name != "posix" or not zmq.has("ipc"):
            return
        socks = {"tasks": self._router, "results": self._pull, "control": self._pub}
        bound: list[tuple[zmq.Socket[Any], str]] = []
        folder = None
        try:
            folder = tempfile.mkdtemp(prefix="zmqworkers-")
            for name, sock in socks.items():
                sock.bind(f"ipc://{folder}/{name}")
                bound.append((sock, f"ipc://{folder}/{name}"))
        except (OSError, zmq.ZMQError) as exc:
            # No writable temporary folder, or a path too long for a Unix
            # socket: TCP serves the local workers too.
            log.debug("no ipc for local workers (%s): they use %s", exc, self.address)
            for sock, endpoint in bound:
                sock.unbind(endpoint)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            return
        # Gone with the engine, or at exit if the engine never closed.
        self._leftovers.add(folder)
        self.local_address = f"ipc://{folder}/tasks"
        self._local_eps = {
            "results": f"ipc://{folder}/results",
            "control": f"ipc://{folder}/control",
        }

    def _run(self) -> None:
        try:
            self._bind()
            if self.options.connection_file:
                from zmqworkers.security.connection import write_connection_file

                written = write_connection_file(
                    self.options.connection_file, self.address, self.options.key
                )
                self._leftovers.add(written)
        except BaseException as exc:
            self._close_sockets()
            self._start_error = exc
            self._ready.set()
            self._closed.set()
            return
        self._ready.set()
        try:
            self._start_local(self._local_target)
            self._loop()
        except BaseException:
            log.exception("controller engine failed")
            raise
        finally:
            self._teardown()

    def _loop(self) -> None:
        opts = self.options
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._pull, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        next_beat = 0.0
        next_check = 0.0
        stop_deadline = 0.0
        while True:
            now = time.monotonic()
            wake_at = min(next_beat, next_check, *self._probe_at[:1])
            timeout = max(0.0, wake_at - now)
            events = dict(poller.poll(int(timeout * 1000) + 1))
            if self._wake_r in events:
                try:
                    os.read(self._wake_r, 65536)
                except BlockingIOError:
                    pass
                self._drain_commands()
            if self._router in events:
                self._recv_all(self._router, self._on_task_channel)
            if self._pull in events:
                self._recv_all(self._pull, self._on_result_channel)
            if self._monitor in events:
                self._on_monitor_events()
            self._dispatch()
            now = time.monotonic()
            if self._probe_at and now >= self._probe_at[0]:
                self._probe_at = [t for t in self._probe_at if t > now]
                self._probe_workers()
            if now >= next_beat:
                self._publish(Kind.HEARTBEAT, {"controller": self.id})
                next_beat = now + opts.heartbeat_interval
            if now >= next_check:
                self._check_liveness(now)
                next_check = now + min(opts.process_check_interval, opts.heartbeat_interval)
            if self._closing:
                if not stop_deadline:
                    stop_deadline = now + opts.stop_timeout
                if not self._local or now > stop_deadline:
                    return

    def _recv_all(self, sock: zmq.Socket[Any], handle: Callable[[list[Any]], None]) -> None:
        # Bounded, so one flooding peer cannot starve the other sockets.
        for _ in range(1000):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                handle(frames)
            except DecodeError as exc:
                self._count_drop(exc)
            except Exception as exc:
                # A signed message this code cannot handle (a bug, or a peer
                # of another release): dropped like any other, never fatal.
                log.debug("message handler raised", exc_info=True)
                self._count_drop(DecodeError("invalid", repr(exc)))

    def _count_drop(self, exc: DecodeError) -> None:
        self.dropped[exc.reason] += 1
        n = self.dropped[exc.reason]
        if n & (n - 1) == 0:  # 1, 2, 4, 8, ...: rate-limited
            log.warning("dropped message (%s); %d dropped for this reason", exc, n)

    def _decode(self, frames: list[Any], key: Any) -> Any:
        msg = decode(frames, key, max_size=self.options.max_message_size)
        self._guard.check(msg.sender, msg.seq)
        return msg

    def _session_key(self, sender: str) -> SessionKey:
        # Worker senders on the result channel are "<id>@<tag>/<channel>".
        tag = sender.partition("/")[0].rpartition("@")[2]
        s = self._sessions.get(tag)
        if s is None:
            # No key to check it with: as good as a bad signature.
            raise DecodeError("signature", f"{sender[:80]!r} is in no session")
        return s.key

    # -- commands -----------------------------------------------------------

    def _drain_commands(self) -> None:
        while True:
            try:
                name, arg = self._commands.get_nowait()
            except queue.Empty:
                return
            getattr(self, f"_cmd_{name}")(arg)

    def _cmd_submit(self, arg: tuple[Spec, list[tuple[int, Any]]]) -> None:
        spec, items = arg
        if len(self._specs) > 64:
            # Specs no undelivered task needs are dropped (a face that sends
            # more tasks of one later hands its spec in again with them).
            refs = self.sched.spec_refs
            for sid in [s for s in self._specs if refs.get(s, 0) == 0]:
                del self._specs[sid]
                self._spec_cost.pop(sid, None)
        self._specs[spec.id] = spec
        add = self.sched.add
        for tid, task_arg in items:
            add(tid, spec.id, task_arg)
        self.stats["submitted"] += len(items)

    def _cmd_cancel_many(self, task_ids: list[int]) -> None:
        for tid in task_ids:
            self.sched.cancel(tid)

    def _cmd_pause(self, _: Any) -> None:
        self.sched.paused = True

    def _cmd_resume(self, _: Any) -> None:
        self.sched.paused = False

    def _cmd_call(self, arg: tuple[Callable[[], Any], Future[Any]]) -> None:
        fn, fut = arg
        try:
            fut.set_result(fn())
        except BaseException as exc:
            fut.set_exception(exc)

    def _cmd_stop_workers(self, _: Any) -> None:
        self._local_target = 0
        self._expected_exits.update(self._local)
        for w in list(self.sched.workers.values()):
            w.draining = True
            self._send(w.id, Kind.STOP, {"worker": w.id})

    def _cmd_start_workers(self, n: int | None) -> None:
        want = self.options.n_workers if n is None else n
        self._local_target = want
        # Workers still draining after a stop are on their way out: not counted.
        alive = len(
            [
                p
                for pid, p in self._local.items()
                if p.poll() is None and pid not in self._expected_exits
            ]
        )
        self._start_local(max(0, want - alive))

    def _cmd_shutdown(self, _: Any) -> None:
        self._cmd_stop_workers(None)
        self._publish(Kind.STOP, {"worker": None})
        self._closing = True

    # -- sending ------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send(
        self, worker_id: str, kind: Kind, header: Any, body: Any = (), lose_on_fail: bool = True
    ) -> bool:
        s = self._live.get(worker_id)
        if s is None:
            return False
        frames = encode_frames(kind, self.id, self._next_seq(), s.key, header, body)
        try:
            self._router.send_multipart([s.route, *frames], copy=False)
            self.stats["messages_sent"] += 1
            self.stats["bytes_sent"] += sum(memoryview(f).nbytes for f in frames)
            if kind == Kind.FUNC:
                self.stats["functions_sent"] += 1
            return True
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                if lose_on_fail:
                    self._lose(worker_id, self._how_gone(worker_id))
                return False
            raise

    def _publish(self, kind: Kind, header: Any) -> None:
        self._pub_seq += 1
        frames = encode(kind, f"{self.id}/pub", self._pub_seq, self._pub_key, header)
        self._pub.send_multipart(frames)

    def _dispatch(self) -> None:
        head = self.sched.head_spec()
        if head is not None:
            batch = self._batch_for(head)
            for state in self.sched.workers.values():
                state.batch = batch
        for wid, tids in self.sched.assign():
            # A send that finds a worker gone reads pending results first
            # (see _lose): later workers in this round may have left, and
            # their tasks may have been delivered by a late result.
            w = self.sched.workers.get(wid)
            if w is None:
                continue
            tasks = self.sched.tasks
            # Group by spec, keeping order: usually one group.
            groups: dict[str, list[tuple[int, Any]]] = {}
            for tid in tids:
                rec = tasks.get(tid)
                if rec is None:
                    continue
                groups.setdefault(rec.spec_id, []).append((tid, rec.arg))
            for spec_id, items in groups.items():
                if spec_id not in w.specs:
                    header: dict[str, Any] = {"spec": spec_id}
                    idle = self.sched.idle_specs(w) if len(w.specs) >= 64 else []
                    if idle:
                        header["forget"] = idle
                        w.specs.difference_update(idle)
                    if not self._send(wid, Kind.FUNC, header, self._specs[spec_id].frames):
                        break
                    w.specs.add(spec_id)
                try:
                    body = dumps(items, by_value=True)
                except Exception:
                    # Find the culprits: only they fail, the rest go out.
                    items = self._drop_unsendable(wid, items)
                    if not items:
                        continue
                    body = dumps(items, by_value=True)
                size = sum(memoryview(f).nbytes for f in body) / len(items)
                t, known = self._spec_cost.get(spec_id, (None, 0.0))
                if size > known:
                    self._spec_cost[spec_id] = (t, size)
                    fit = max(1, int(self.options.batch_bytes / size))
                    if fit < len(items):
                        # Larger payloads than this function had so far: send
                        # what fits one message, the rest go to whoever asks next.
                        self.sched.unassign(wid, [tid for tid, _ in items[fit:]])
                        items = items[:fit]
                        body = dumps(items, by_value=True)
                if not self._send(wid, Kind.TASKS, {"spec": spec_id}, body):
                    break
                self.stats["dispatched"] += len(items)

    def _drop_unsendable(self, wid: str, items: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
        good, out = [], []
        for item in items:
            try:
                dumps(item, by_value=True)
                good.append(item)
            except Exception as exc:
                if self.sched.complete(wid, item[0]) is not None:
                    err = make_remote_error(
                        type(exc).__name__,
                        f"the task's argument cannot be pickled: {exc}",
                        "",
                        "(not sent)",
                        self.host,
                        exc,
                    )
                    out.append((item[0], False, err))
        self._deliver(out)
        return good

    # -- receiving ----------------------------------------------------------

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
            # Nothing in it is authenticated: the answer goes unsigned and
            # the log line is rate-limited (_count_drop), as for any drop.
            hdr = {"reason": refusal, "version": True, "code": "version", "fatal": True}
            with contextlib.suppress(zmq.ZMQError):
                frames = encode_unsigned(Kind.REFUSED, self.id, 0, hdr)
                self._router.send_multipart([routing_id, *frames], flags=zmq.NOBLOCK)
            raise DecodeError("version", refusal) from exc
        if msg.kind == Kind.INFO:
            self._on_info(routing_id, msg.sender)
            return
        if msg.kind != Kind.HELLO:
            raise DecodeError("unexpected", f"{msg.kind.name} on the task channel")
        self._on_hello(routing_id, msg.header)

    def _send_raw(self, routing_id: bytes, kind: Kind, header: Any) -> None:
        # To a peer not (yet) in a session: signed with the shared key, and
        # never blocking, as the peer may be a flood that does not read.
        frames = encode(kind, self.id, self._next_seq(), self.options.key, header)
        try:
            self._router.send_multipart([routing_id, *frames], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _on_hello(self, routing_id: bytes, hdr: Any) -> None:
        if not isinstance(hdr, dict):
            raise DecodeError("malformed", "hello header is not a map")
        wid, nonce = hdr.get("id"), hdr.get("nonce")
        if not isinstance(wid, str) or not 0 < len(wid) < MAX_SENDER_LENGTH - 40 or "@" in wid:
            raise DecodeError("malformed", "hello without a valid worker id")
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise DecodeError("malformed", f"hello from {wid} without a {NONCE_SIZE}-byte nonce")
        pid, capacity, host = hdr.get("pid", 0), hdr.get("capacity", 2), hdr.get("host", "")
        if not (_is_int(pid) and _is_int(capacity) and isinstance(host, str)):
            raise DecodeError("malformed", f"hello from {wid} with fields of the wrong type")
        theirs = str(hdr.get("version", "?"))
        if not library_compatible(__version__, theirs):
            refusal = (
                f"worker runs zmqworkers {theirs}, controller zmqworkers {__version__}: "
                "install the same zmqworkers release on both sides"
            )
            log.error("refused worker %s: %s", wid, refusal)
            self.dropped["version"] += 1
            self._send_raw(
                routing_id,
                Kind.REFUSED,
                {"reason": refusal, "fatal": True, "code": "version", "nonce": nonce},
            )
            return
        if self._closing:
            self._send_raw(
                routing_id,
                Kind.REFUSED,
                {"reason": "controller is shutting down", "code": "closing", "nonce": nonce},
            )
            return
        now = time.monotonic()
        pending = self._pending.get(wid)
        if pending is not None and pending.worker_nonce == nonce and pending.route == routing_id:
            # The same hello again (the worker re-sends it when the answer is
            # slow): answer with the same session, or the two would cross.
            self._welcome(pending, nonce)
            return
        w = WorkerState(
            id=wid,
            host=host,
            pid=pid,
            capacity=min(max(1, capacity), 1 << 20),
            local=pid in self._local and host == self.host,
            last_seen=now,
            joined=now,
        )
        ours = secrets.token_bytes(NONCE_SIZE)
        # A worker that dialled the private ipc folder of local workers runs
        # on this host (the hello is signed, so the claim is a key holder's).
        via_ipc = (
            self.local_address.startswith("ipc://") and hdr.get("dialled") == self.local_address
        )
        # Both ends must vouch for the link before buffers go unhashed: ours
        # is protected if all our sockets are, or if it is that ipc folder.
        ours_ok = self._link_protected or (via_ipc and not self.options.sign_buffers)
        protected = ours_ok and hdr.get("link_protected") is True
        w.buffers_signed = not protected
        session = _Session(
            tag=ours.hex(),
            route=routing_id,
            key=SessionKey(
                derive_key(self.options.key, b"session", nonce, ours), sign_buffers=not protected
            ),
            state=w,
            expires=now + self.options.heartbeat_interval * self.options.heartbeat_misses + 2,
            worker_nonce=nonce,
            via_ipc=via_ipc,
        )
        # The worker joins on its first message signed with the session key:
        # a replayed hello cannot produce one, so it never gets a task.
        old = self._pending.pop(wid, None)
        if old is not None:
            self._sessions.pop(old.tag, None)
        if len(self._pending) >= MAX_PENDING_SESSIONS:
            _, oldest = self._pending.popitem(last=False)
            self._sessions.pop(oldest.tag, None)
        self._pending[wid] = session
        self._sessions[session.tag] = session
        self._welcome(session, nonce)

    def _welcome(self, session: _Session, nonce: bytes) -> None:
        self._send_raw(
            session.route,
            Kind.WELCOME,
            {
                "controller": self.id,
                "nonce": nonce,
                "session": bytes.fromhex(session.tag),
                "pub_nonce": self._pub_nonce,
                "pub_seq": self._pub_seq,
                "results": self._results_ep,
                "control": self._control_ep,
                "heartbeat_interval": self.options.heartbeat_interval,
                "heartbeat_misses": self.options.heartbeat_misses,
                "sign_buffers": session.key.sign_buffers,
                # The side channels' ipc addresses, for a local worker only.
                "ipc": self._local_eps if session.via_ipc else {},
            },
        )

    def _join(self, s: _Session) -> None:
        wid = s.state.id
        if self._pending.get(wid) is s:
            del self._pending[wid]
        if wid in self._live:
            # Said hello again (reconnected): what it held is not coming back.
            self._lose(wid, "reconnected")
        s.joined = True
        now = time.monotonic()
        s.state.last_seen = s.state.joined = now
        self._live[wid] = s
        self.sched.join(s.state)
        self.heartbeat.seen(wid, now)
        self._lost_ids.pop(wid, None)
        log.info("worker %s joined (host %s, pid %d)", wid, s.state.host, s.state.pid)
        self.handler.on_event("worker_joined", s.state.snapshot())

    def _ask_to_rejoin(self, s: _Session) -> None:
        """A worker declared lost is alive after all (a cut link came back).

        Its late results still count if not delivered yet; it is asked to say
        hello again so it gets work, and asked again after a while, in case
        the request went into a connection that was gone.
        """
        wid = s.state.id
        now = time.monotonic()
        if wid in self._live or now - self._lost_ids[wid] <= self.heartbeat.limit:
            return
        self._lost_ids[wid] = now
        log.info("worker %s, declared lost, is back: asking it to rejoin", wid)
        frames = encode_frames(
            Kind.STOP, self.id, self._next_seq(), s.key, {"worker": wid, "rejoin": True}, ()
        )
        try:
            self._router.send_multipart([s.route, *frames], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # gone again: the next heartbeat asks again

    def _end_session(self, wid: str) -> None:
        s = self._live.pop(wid, None)
        if s is None:
            return
        s.retired = True
        self._retired[s.tag] = s
        if len(self._retired) > MAX_RETIRED_SESSIONS:
            tag, old = self._retired.popitem(last=False)
            self._sessions.pop(tag, None)
            for channel in ("r", "hb"):
                self._guard.forget(f"{old.state.id}@{tag}/{channel}")

    def _on_info(self, routing_id: bytes, sender: str) -> None:
        # Answered to whoever holds the key: `zmqworkers info ADDRESS`.
        # The client reads one reply and goes, so its sequence is forgotten.
        self._guard.forget(sender)
        header = {
            "controller": self.id,
            "host": self.host,
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "queued": self.sched.queued,
            "workers": [
                {k: v for k, v in w.snapshot().items() if k != "last_heartbeat"}
                for w in self.sched.workers.values()
            ],
        }
        self._send_raw(routing_id, Kind.INFO, header)

    def _on_result_channel(self, frames: list[Any]) -> None:
        msg = self._decode(frames, self._session_key)
        s = self._sessions[msg.sender.partition("/")[0].rpartition("@")[2]]
        wid = s.state.id
        kind = msg.kind
        if s.retired:
            # Left or lost: a late result is still taken, nothing else.
            if kind == Kind.RESULTS:
                self._on_results(wid, msg.payload)
            if kind in (Kind.HEARTBEAT, Kind.RESULTS) and wid in self._lost_ids:
                self._ask_to_rejoin(s)
            return
        if not s.joined:
            self._join(s)
        w = s.state
        w.last_seen = time.monotonic()
        self.heartbeat.seen(wid, w.last_seen)
        if kind == Kind.RESULTS:
            spec_id = self._on_results(wid, msg.payload)
            if spec_id is not None and isinstance(msg.header, dict):
                self._tune_batch(spec_id, msg.header, msg.nbytes)
        elif kind == Kind.HEARTBEAT:
            if not isinstance(msg.header, dict):
                raise DecodeError("malformed", f"heartbeat from {wid} without a header map")
            w.state = str(msg.header.get("state", w.state))
            task = msg.header.get("task")
            w.current = task if _is_int(task) else None
        elif kind == Kind.BYE:
            returned = msg.header.get("returned", []) if isinstance(msg.header, dict) else []
            if not isinstance(returned, list) or not all(_is_int(t) for t in returned):
                raise DecodeError("malformed", f"bye from {wid} with a bad task list")
            self.sched.hand_back(wid, returned)
            self.sched.leave(wid)
            self._end_session(wid)
            self.heartbeat.forget(wid)
            log.info("worker %s left, handed back %d task(s)", wid, len(returned))
            self.handler.on_event("worker_left", wid)
        elif kind == Kind.MESSAGE:
            self.handler.on_event("message", msg.header)
        else:
            raise DecodeError("unexpected", f"{kind.name} on the result channel")

    def _tune_batch(self, spec_id: str, header: dict[str, Any], nbytes: int) -> None:
        """Learn a function's time and payload per task from a result batch."""
        busy, n = header.get("busy"), header.get("n")
        if not (isinstance(busy, float) and isinstance(n, int) and n > 0):
            return
        per_task = busy / n
        old_t, old_bytes = self._spec_cost.get(spec_id, (None, 0.0))
        # Smoothed, but one slow batch counts at once: holding a slow task
        # behind others costs more than sending tiny ones alone.
        t = per_task if old_t is None or per_task > old_t else 0.7 * old_t + 0.3 * per_task
        self._spec_cost[spec_id] = (t, max(old_bytes, nbytes / n))

    def _batch_for(self, spec_id: str) -> int:
        """Tasks per dispatch unit for this function: 1 until it is measured.

        Measured per function, not per worker: a slow function that follows
        a fast one must not be sent in the fast one's batches.
        """
        t, size = self._spec_cost.get(spec_id, (None, 0.0))
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

    def _on_results(self, wid: str, items: Any) -> str | None:
        if not isinstance(items, list):
            raise DecodeError("malformed", "results payload is not a list")
        # Checked whole before any is taken: a bad entry late in a batch must
        # not leave earlier ones completed but never delivered.
        for item in items:
            if not (
                isinstance(item, tuple | list)
                and len(item) == 3
                and _is_int(item[0])
                and isinstance(item[1], bool)
            ):
                raise DecodeError("malformed", f"result entry from {wid} is not (id, ok, value)")
        w = self.sched.workers.get(wid)
        host = w.host if w is not None else ""
        out: list[tuple[int, bool, Any]] = []
        complete = self.sched.complete
        spec_id = None
        for tid, ok, value in items:
            rec = complete(wid, tid)
            if rec is None:
                self.stats["duplicates"] += 1
                continue
            spec_id = rec.spec_id
            if not ok:
                value = _remote_error(value, wid, host)
                self.stats["failed"] += 1
            out.append((tid, ok, value))
        self._deliver(out)
        return spec_id

    def _deliver(self, out: list[tuple[int, bool, Any]]) -> None:
        if not out:
            return
        self.stats["delivered"] += len(out)
        try:
            self.handler.on_results(out)
        except Exception:
            log.exception("result handler raised; results were delivered to it once")

    # -- liveness -----------------------------------------------------------

    def _check_liveness(self, now: float) -> None:
        for pid, proc in list(self._local.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del self._local[pid]
            expected = pid in self._expected_exits
            self._expected_exits.discard(pid)
            wid = self._worker_by_pid(pid)
            if wid is not None:
                self._lose(wid, describe_exit(rc))
            if not expected and not self._closing:
                log.warning("local worker pid %d %s", pid, describe_exit(rc))
                if self.options.replace_dead_workers and self._replacements < 100:
                    self._replacements += 1
                    self._start_local(1)
        for wid, s in list(self._pending.items()):
            if now > s.expires:
                # Hello answered, but no signed word since: a replay, or a
                # worker that could not reach the result port.
                del self._pending[wid]
                self._sessions.pop(s.tag, None)
                self.stats["hellos_expired"] += 1
        for wid, silent in self.heartbeat.expired(now):
            if wid in self.sched.workers:
                self._lose(wid, describe_silence(silent, self.options.heartbeat_interval))
            else:
                self.heartbeat.forget(wid)

    def _on_monitor_events(self) -> None:
        disconnected = False
        for _ in range(1000):
            try:
                frames = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if monitor_event(frames) == zmq.EVENT_DISCONNECTED:
                disconnected = True
        if disconnected:
            # The event names a file descriptor, not a routing id, and a new
            # connection may reuse the descriptor before this event is read.
            # So probe instead: a send to a peer whose connection is gone
            # fails at once (ROUTER_MANDATORY). The ROUTER drops the pipe a
            # moment after the event, so probe again shortly after.
            self._probe_workers()
            now = time.monotonic()
            self._probe_at = sorted({*self._probe_at, now + 0.05, now + 0.25})

    def _probe_workers(self) -> None:
        for wid in list(self.sched.workers):
            self._send(wid, Kind.HEARTBEAT, {"controller": self.id, "probe": True})

    def _how_gone(self, wid: str) -> str:
        w = self.sched.workers.get(wid)
        proc = self._local.get(w.pid) if w is not None and w.local else None
        if proc is not None:
            # A local worker's connection closes as its process dies: wait a
            # moment for the exit status, which says far more.
            try:
                return describe_exit(proc.wait(0.2))
            except subprocess.TimeoutExpired:
                pass
        return "connection closed: process died or host reset the link"

    def _worker_by_pid(self, pid: int) -> str | None:
        for w in self.sched.workers.values():
            if w.local and w.pid == pid:
                return w.id
        return None

    def _lose(self, wid: str, how: str) -> None:
        if wid not in self.sched.workers:
            return
        # Results it sent before dying may wait unread: take them first, so
        # the blame for the death falls on the task it was really running.
        self._recv_all(self._pull, self._on_result_channel)
        if wid not in self.sched.workers:
            return  # it said goodbye after all
        log.warning("worker %s lost: %s", wid, how)
        self.heartbeat.forget(wid)
        if len(self._lost_ids) < 100_000:
            self._lost_ids[wid] = float("-inf")
        failed = self.sched.lose(wid, how)
        self._end_session(wid)
        self.stats["workers_lost"] += 1
        self.handler.on_event("worker_lost", {"id": wid, "how": how})
        self._deliver([(tid, False, err) for tid, err in failed])

    def _start_local(self, n: int) -> None:
        for _ in range(n):
            proc = start_local_worker(
                self.local_address,
                self.options.key,
                prefetch=self.options.prefetch,
                extra_env=self.options.worker_env,
            )
            self._local[proc.pid] = proc

    def _teardown(self) -> None:
        # Local workers that did not leave in time are ended: first politely.
        for proc in self._local.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 3
        for proc in self._local.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._local.clear()
        # Results sent just before the workers left still count.
        try:
            self._recv_all(self._pull, self._on_result_channel)
        except zmq.ZMQError:
            pass  # the engine failed with its sockets: nothing to read
        abandoned = list(self.sched.tasks)
        self._closed.set()
        self._close_sockets()
        os.close(self._wake_r)
        os.close(self._wake_w)
        # Whatever commands came in after the last drain are answered too.
        while True:
            try:
                name, arg = self._commands.get_nowait()
            except queue.Empty:
                break
            if name == "submit":
                abandoned.extend(tid for tid, _ in arg[1])
            elif name == "call":
                arg[1].set_exception(RuntimeError("the controller engine is closed"))
        self.handler.on_event("closed", abandoned)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def monitor_event(frames: list[bytes]) -> int:
    """The event number of one socket-monitor message.

    Read here rather than with ``zmq.utils.monitor``, which imports asyncio:
    about 15 ms on the path to the first result.
    """
    return int(struct.unpack_from("=H", frames[0])[0])


def _port(sock: zmq.Socket[Any]) -> int:
    ep = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    return int(ep.rsplit(":", 1)[1])


def _remote_error(info: Any, wid: str, host: str) -> BaseException:
    if not isinstance(info, dict):
        return make_remote_error("Error", repr(info), "", wid, host)
    original = None
    if info.get("exc"):
        try:
            original = pickle.loads(info["exc"])
        except Exception:
            original = None
    return make_remote_error(
        str(info.get("type", "Exception")),
        str(info.get("message", "")),
        str(info.get("traceback", "")),
        wid,
        host,
        original if isinstance(original, BaseException) else None,
    )
