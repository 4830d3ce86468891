"""Local workers forked from a fork server, the ``"forkserver"`` start method.

A spawned local worker (``"spawn"``) is a new interpreter that imports
zmqworkers, numpy and the user's modules before it can say hello: about
0.1 s for zmqworkers alone, seconds for an application such as pydidas.
A fork server (:mod:`zmqworkers.worker.zygote`) imports them once and forks
each worker from that state, so later workers start in milliseconds.

One server per controller process (and per environment and working
folder, which the preloaded modules may have read on import), shared by
every engine in that process: the first local worker pays for the
imports, every later one, of any ``Cluster`` or ``WorkerController`` in
the process, starts warm.

How the server starts: while the controller process is still a single
thread (no engine thread yet, no Qt, no zmq context with sockets, whose
I/O threads a fork would copy half-way), the server is forked from it: it
then has zmqworkers, numpy and the caller's modules imported already, and
the first worker forks in milliseconds. Otherwise the server is a fresh
interpreter (exec), which holds only what it imported itself. An engine
asks for its first local workers as soon as it has started the server: the
request waits in the server's socket before the server is ready to read
it, so it forks them at once, while the engine binds the address they dial. A forked
server drops its parent's exit handlers and signal handlers, and never
touches what it inherited beyond that; like a worker forked by
``multiprocessing``, it holds copies of the controller's open files.

::

    controller process                       fork server (single thread)
    ┌──────────────────────────┐  JSON lines  ┌────────────────────────┐
    │ engine → LocalWorkers ──►│ fork/signal ►│ preload, os.fork()     │
    │ ForkedProcess.poll() ◄───│◄ forked/exit │ waitpid → exit reports │
    └──────────────────────────┘ socketpair   └──────────┬─────────────┘
                                                         │ fork
                                                  worker, own process group

A :class:`~.forked.ForkedProcess` stands in for ``subprocess.Popen``: pid, poll,
wait with a timeout, terminate and kill (of the worker's process group).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, NoReturn

from zmqworkers.controller.forked import ForkedProcess
from zmqworkers.controller.forkstart import ForkedServerProcess, fork_server, may_fork_here
from zmqworkers.errors import ConfigurationError
from zmqworkers.security.keys import KEY_ENV
from zmqworkers.worker.mp_authkey import MP_AUTHKEY_ENV

log = logging.getLogger(__name__)

START_METHODS = ("forkserver", "spawn")
# Linux only: elsewhere fork has caveats (macOS's system libraries) that
# spawn avoids.
DEFAULT_START_METHOD = "forkserver" if sys.platform.startswith("linux") else "spawn"
# How long a fork may take, preloading included (an application's imports).
FORK_TIMEOUT = 300.0
# Servers kept for other environments, beyond which idle ones are ended.
MAX_SERVERS = 4
# The controller's script: never imported again under another name.
NOT_PRELOADED = frozenset({"__main__", "__mp_main__"})


class ForkServerUnavailable(Exception):
    """The fork server cannot fork: the launcher spawns instead."""

    def __init__(self, why: str, unsafe_module: str | None = None) -> None:
        super().__init__(why)
        # A preload that left a thread running in the server.
        self.unsafe_module = unsafe_module


class ForkServer:
    """The controller's end of one fork server."""

    def __init__(self, env: Mapping[str, str], cwd: str, forkable: bool | None = None) -> None:
        ours, theirs = socket.socketpair()
        self._next_id = 0
        self.proc: subprocess.Popen[bytes] | ForkedServerProcess
        # ``forkable``: whether may_fork_here() said yes just now (its scan
        # of the objects can take milliseconds); None to ask it here.
        self.forked = cwd == os.getcwd() and (may_fork_here() if forkable is None else forkable)
        try:
            if self.forked:
                self.proc = fork_server(theirs, ours, env)
            else:
                self.proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "zmqworkers.worker.zygote",
                        str(theirs.fileno()),
                        str(os.getpid()),
                    ],
                    env=dict(env),
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    pass_fds=[theirs.fileno()],
                    # No terminal signal reaches it: it ends with its controller.
                    start_new_session=True,
                )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.owner = os.getpid()
        self._sock = ours
        self._lock = threading.Lock()
        self._buf = b""
        self._replies: dict[int, dict[str, Any]] = {}
        self.exits: dict[int, int] = {}
        self.live: set[int] = set()  # forked, no exit reported yet
        self.broken: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.broken is None and self.proc.poll() is None

    def request_forks(self, order: ForkOrder) -> list[int]:
        """Ask for ``order.n`` new worker processes; :meth:`take_forks` takes them.

        Each runs as ``python -m zmqworkers.worker`` would with
        :func:`~zmqworkers.worker.args.local_worker_argv` of ``order.worker``
        and the server as its parent. Asked for in one write, so that the
        server forks them back to back rather than one per round trip.
        """
        with self._lock:
            ids = list(range(self._next_id + 1, self._next_id + 1 + order.n))
            self._next_id += order.n
            request = {
                "op": "fork",
                "worker": dict(order.worker),
                "env": dict(order.env),
                "cwd": os.getcwd(),
                "preload": [m for m in order.preload if m not in NOT_PRELOADED],
            }
            self._write(*({**request, "id": rid} for rid in ids))
            return ids

    def take_forks(
        self, ids: Sequence[int]
    ) -> tuple[list[ForkedProcess], ForkServerUnavailable | None]:
        """The processes :meth:`request_forks` asked for, once the server has answered."""
        with self._lock:
            deadline = time.monotonic() + FORK_TIMEOUT
            while not all(rid in self._replies for rid in ids):
                left = deadline - time.monotonic()
                if left <= 0:
                    # A late child would serve nobody: the server goes, with it.
                    self._break("no answer to a fork request in time")
                self._read(min(left, 1.0))
            replies = [self._replies.pop(rid) for rid in ids]
        forked: list[ForkedProcess] = []
        error: ForkServerUnavailable | None = None
        for reply in replies:
            if reply["op"] == "forked":
                pid = int(reply["pid"])
                self.live.add(pid)
                forked.append(ForkedProcess(self, pid))
            elif error is None:
                error = ForkServerUnavailable(
                    reply.get("error", "fork refused"), reply.get("unsafe")
                )
        return forked, error

    def preload(self, modules: Sequence[str]) -> None:
        """Have the server import ``modules`` now; no answer is awaited."""
        with self._lock:
            self._write(
                {"op": "preload", "modules": [m for m in modules if m not in NOT_PRELOADED]}
            )

    def send_signal(self, pid: int, signo: int) -> None:
        with self._lock:
            if self.broken is None:
                try:
                    self._write({"op": "signal", "pid": pid, "signo": int(signo)})
                    return
                except ForkServerUnavailable:
                    pass
        # The server is gone and cannot reap this pid: signal it directly.
        try:
            os.kill(pid, signo)
        except ProcessLookupError:
            pass

    def collect(self, timeout: float = 0.0) -> None:
        """Read what the server has reported, waiting up to ``timeout``."""
        if not self._lock.acquire(timeout=max(timeout, 0.05)):
            return
        try:
            if self.broken is None:
                self._read(timeout)
        except ForkServerUnavailable:
            pass
        finally:
            self._lock.release()

    def close(self, timeout: float = 5.0) -> None:
        """End the server; it kills workers of its own still running."""
        with self._lock:
            if self.broken is None:
                self.broken = "closed"
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    # -- under the lock ------------------------------------------------------

    def _write(self, *messages: dict[str, Any]) -> None:
        if self.broken is not None:
            raise ForkServerUnavailable(f"the fork server is gone ({self.broken})")
        try:
            self._sock.sendall(b"".join(json.dumps(m).encode() + b"\n" for m in messages))
        except OSError as exc:
            self._break(f"cannot write to it: {exc}")

    def _read(self, timeout: float) -> None:
        if self.broken is not None:
            raise ForkServerUnavailable(f"the fork server is gone ({self.broken})")
        ready, _, _ = select.select([self._sock], [], [], max(timeout, 0.0))
        if not ready:
            return
        try:
            data = self._sock.recv(1 << 16)
        except OSError as exc:
            self._break(f"cannot read from it: {exc}")
        if not data:
            self._break(f"it exited ({self.proc.poll()})")
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            message = json.loads(line)
            if message["op"] == "exit":
                self.exits[int(message["pid"])] = int(message["rc"])
                self.live.discard(int(message["pid"]))
            else:
                self._replies[int(message["id"])] = message

    def _break(self, why: str) -> NoReturn:
        self.broken = why
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise ForkServerUnavailable(f"the fork server is gone: {why}")


# -- one server per process and environment -----------------------------------

_servers: dict[tuple[str, ...], ForkServer] = {}
# Servers that fork no more but may still have workers to reap and report.
_retired: list[ForkServer] = []
_servers_lock = threading.Lock()
# Modules whose import left a thread running in a server.
_unsafe_preloads: set[str] = set()


def _retire(server: ForkServer) -> None:
    with _servers_lock:
        for key, known in list(_servers.items()):
            if known is server:
                del _servers[key]
                _retired.append(server)


class ForkOrder(NamedTuple):
    """What one fork request asks for: ``n`` workers of one kind."""

    worker: Mapping[str, Any]  # local_worker_args's values, less the parent (the server)
    env: Mapping[str, str]
    preload: Sequence[str]
    n: int


class WorkerRequest(NamedTuple):
    """Local workers as a launcher asks for them: the same for each."""

    address: str
    prefetch: int
    env: Mapping[str, str]  # the child's whole environment, key and authkey too
    preload: Sequence[str]
    extra_env: Mapping[str, str]  # the run's worker_env (it picks the server)
    limits: Mapping[str, int | None]  # max_tasks and max_memory, None when not set


class PendingForks(NamedTuple):
    """Workers asked of a fork server (:func:`request_workers`), not yet taken."""

    request: WorkerRequest
    server: ForkServer
    ids: list[int]


def request_workers(request: WorkerRequest, count: int, *, early: bool = False) -> PendingForks:
    """Ask this process's fork server for ``count`` workers, now.

    Their processes come with ``fork_workers(..., pending=...)``. The
    server's own environment lacks the key and the authkey: only the
    request carries them, to the child alone. ``early``: called while the
    controller may still be a single thread (see :func:`start_server_early`).
    Raises
    ``OSError`` when no server can start, :class:`ForkServerUnavailable`
    when it cannot be asked.
    """
    r = request
    base = {k: v for k, v in r.env.items() if k not in (KEY_ENV, MP_AUTHKEY_ENV)}
    # A controller that uses numpy hands its workers arrays: import it once.
    wanted = [*r.preload, *(["numpy"] if "numpy" in sys.modules else [])]
    wanted = [m for m in wanted if m not in _unsafe_preloads]
    worker = {"address": r.address, "prefetch": r.prefetch}
    worker.update({k: v for k, v in r.limits.items() if v})
    order = ForkOrder(worker, r.env, wanted, count)
    cwd = os.getcwd()
    forkable = _forkable_now(base, cwd, r.extra_env) if early else None
    # A server started now has the request a moment after its fork, before
    # it is ready to read it.
    server = server_for(base, cwd, r.extra_env, forkable)
    return PendingForks(request, server, server.request_forks(order))


def fork_workers(
    request: WorkerRequest, count: int, pending: PendingForks | None = None
) -> tuple[list[ForkedProcess], ForkServerUnavailable | None]:
    """``count`` workers forked from this process's fork server.

    Those of ``pending`` (asked for with the same request) first. Returns
    the ones forked, and why the others were not (None when all were): the
    launcher spawns those.
    """
    forked: list[ForkedProcess] = []
    for attempt in (1, 2):
        server: ForkServer | None = None
        try:
            if pending is None:
                pending = request_workers(request, count - len(forked))
            server = pending.server
            procs, error = server.take_forks(pending.ids)
        except OSError as exc:
            return forked, ForkServerUnavailable(f"cannot start a fork server: {exc}")
        except ForkServerUnavailable as exc:
            procs, error = [], exc
        pending = None
        forked.extend(procs)
        if error is None or attempt == 2:
            return forked, error
        if error.unsafe_module is not None and server is not None:
            # That server forks no more; a new one, without that module,
            # takes its place (its workers import it themselves).
            log.warning("%s; it is no longer preloaded in this process", error)
            _unsafe_preloads.add(error.unsafe_module)
            _retire(server)
        elif server is not None and server.broken is None:
            return forked, error
        # else: a server that died (killed by hand?) is replaced once.
    raise AssertionError("unreachable")


def check_preload(preload: Sequence[str]) -> tuple[str, ...]:
    """Module names, each a dotted name (a string alone would be read letter by letter)."""
    if isinstance(preload, (str, bytes)) or not isinstance(preload, Sequence):
        raise ConfigurationError(
            f"preload takes a list of module names, e.g. ['numpy'], not {preload!r}"
        )
    for name in preload:
        if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
            raise ConfigurationError(f"preload: {name!r} is not a module name")
    return tuple(preload)


def warm_up(preload: Sequence[str] = ()) -> None:
    """Start this process's fork server now and have it import ``preload``.

    Returns at once: the server imports while the caller goes on (a GUI
    loading, say), so that the first local workers, of a ``Cluster``,
    ``WorkerController`` or ``AppRunner`` with the default start method
    and no ``worker_env`` of its own, fork warm too. Later calls add modules.
    """
    names = check_preload(preload)
    wanted = [*names, *(["numpy"] if "numpy" in sys.modules else [])]
    server_for(_server_env({}), os.getcwd(), {}).preload(
        [m for m in wanted if m not in _unsafe_preloads]
    )


def start_server_early(extra_env: Mapping[str, str]) -> None:
    """Start the fork server for local workers with ``extra_env`` now, if forked.

    An engine calls this before it starts its thread: while this process
    is single-threaded, the server is forked from it, already importing
    what it imports. Later, the engine thread would make it exec.
    """
    env, cwd = _server_env(extra_env), os.getcwd()
    if _forkable_now(env, cwd, extra_env):
        try:
            server_for(env, cwd, extra_env, forkable=True)
        except OSError as exc:
            log.warning("cannot start a fork server: %s; it is started when needed", exc)


def _forkable_now(env: Mapping[str, str], cwd: str, extra_env: Mapping[str, str]) -> bool:
    """Whether a server for ``env`` must start and can be forked from here now."""
    # A running server needs nothing: not even the scan for threads and
    # contexts, which takes milliseconds once another OS thread runs.
    return _running_server(_server_key(env, cwd, extra_env)) is None and may_fork_here()


def _server_env(extra_env: Mapping[str, str]) -> dict[str, str]:
    # A server's environment: a local worker's, less the key and the authkey.
    env = {**os.environ, **extra_env}
    return {k: v for k, v in env.items() if k not in (KEY_ENV, MP_AUTHKEY_ENV)}


def _server_key(env: Mapping[str, str], cwd: str, extra_env: Mapping[str, str]) -> tuple[str, ...]:
    """What tells servers apart: what decides what a module does when it is imported.

    The working folder (``sys.path[0]``), the run's own ``worker_env``, the
    ``PYTHON*`` variables and the thread counts (``OMP_NUM_THREADS``, ...).
    Not every variable: importing pydidas, for one, sets some, and a
    server per such change would leave every run cold.
    """
    shaping = sorted(
        f"{k}={v}"
        for k, v in env.items()
        if k in extra_env or k.startswith("PYTHON") or k.endswith("_NUM_THREADS")
    )
    return (sys.executable, cwd, *shaping)


def _running_server(key: tuple[str, ...]) -> ForkServer | None:
    """This process's server for ``key``, if it has one that has not ended."""
    with _servers_lock:
        server = _servers.get(key)
    if server is None or server.owner != os.getpid() or not server.alive():
        return None
    return server


def server_for(
    env: Mapping[str, str],
    cwd: str,
    extra_env: Mapping[str, str],
    forkable: bool | None = None,
) -> ForkServer:
    """This process's fork server for ``env`` and ``cwd``, started on first use.

    One per :func:`_server_key`. ``forkable``: see :class:`ForkServer`.
    """
    key = _server_key(env, cwd, extra_env)
    with _servers_lock:
        server = _servers.get(key)
        if server is not None and server.owner == os.getpid() and not server.alive():
            server.close()  # reaped; its workers leave as orphans
            server = None
        if server is None or server.owner != os.getpid():
            server = ForkServer(env, cwd, forkable)
            _servers[key] = server
            _close_idle_servers(keep=server)
        return server


def _close_idle_servers(keep: ForkServer) -> None:
    """Past MAX_SERVERS, end the oldest servers that have no worker running.

    Each environment has a server of its own; a program that changes its
    environment between runs would otherwise collect them.
    """
    for key, server in list(_servers.items()):
        if len(_servers) <= MAX_SERVERS:
            return
        if server is not keep and server.owner == os.getpid():
            server.collect()
            if not server.live:
                del _servers[key]
                server.close()


def server_pids() -> set[int]:
    """The process ids of this process's fork servers."""
    with _servers_lock:
        return {s.pid for s in [*_servers.values(), *_retired] if s.owner == os.getpid()}


def shutdown_servers() -> None:
    """End every fork server of this process (their workers with them)."""
    with _servers_lock:
        servers = [*_servers.values(), *_retired]
        _servers.clear()
        _retired.clear()
    for server in servers:
        server.close()


def _forget_servers() -> None:
    # In a child forked from the controller: the servers are its parent's.
    # Closing this copy of each socket leaves the parent's link alone; the
    # lock may have been held by a thread that the child does not have.
    global _servers_lock
    _servers_lock = threading.Lock()
    for server in [*_servers.values(), *_retired]:
        server._sock.close()
    _servers.clear()
    _retired.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_servers)
# Registered on import, so it runs after the engines' own exit handlers:
# a server ends with the interpreter that started it, and is reaped.
atexit.register(shutdown_servers)
