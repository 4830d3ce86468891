"""The fork server: a clean, single-threaded template that forks local workers.

``python -m zmqworkers.worker.zygote FD CONTROLLER_PID`` is started by
:mod:`zmqworkers.controller.forkserver`. It imports the worker program (and
the modules it is asked to preload) once, then forks a worker for each
request, so a new local worker starts with its imports done instead of
paying for them itself.

Fork safety: the server has no zmq context and no thread of its own. Each
child builds its own context when its worker starts. A preload that leaves a
thread running makes the server refuse to fork (the controller then spawns).

Lines of JSON on the socket ``FD``, one object each:

  controller -> server   {"op": "fork", "id", "worker", "env", "cwd", "preload"}
                         {"op": "preload", "modules"}
                         {"op": "signal", "pid", "signo"}
  server -> controller   {"op": "forked", "id", "pid"} or {"op": "failed", "id", "error"}
                         {"op": "exit", "pid", "rc"}  (rc as subprocess's returncode)

The server is the parent of the workers, so it reaps them and reports how
each ended; and it sends their signals, to the worker's process group, so
that a pid it has already reaped is never signalled. It ends with its
controller: at end of file on ``FD`` (every copy of the controller's end is
closed) or when it is re-parented (a forked sibling of the controller may
still hold that end). Its workers' process groups are then killed.
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

log = logging.getLogger(__name__)

# What a local worker imports on its way to its first result, loaded before
# the server's first fork (taking the controller's authkey loads
# multiprocessing's resource tracker).
WORKER_MODULES = (
    "zmqworkers.worker.args",
    "zmqworkers.worker.loop",
    "zmqworkers.worker.mp_authkey",
    "zmqworkers.worker.group",
    "zmqworkers.logs",
    "zmqworkers.heap",
    "zmqworkers.security.connection",
    "zmqworkers.security.keys",
    "multiprocessing.resource_tracker",
)
# The function specs are unpickled with it: loaded by the server too (a
# server forked from its controller has it already, see forkstart.py).
SERVER_MODULES = ("cloudpickle",)
# What only some tasks need (shared memory an app makes): loaded once the
# server has nothing to do, so that no first fork waits for it. A worker
# forked before then imports it if it needs it.
LATER_MODULES = ("multiprocessing.shared_memory",)
# How often the server looks at its parent when nothing else wakes it.
PARENT_CHECK = 0.25


class ForkServer:
    """The server's loop: requests in, forks and exit reports out."""

    def __init__(self, sock: socket.socket, controller_pid: int) -> None:
        self.sock = sock
        self.controller_pid = controller_pid
        self.children: set[int] = set()
        self.preloaded: set[str] = set()
        self.unsafe: str | None = None
        self.controller_gone = False
        self.idle_loaded = False  # LATER_MODULES
        self._buf = b""
        # SIGCHLD wakes select() through this pipe, so exits are told at once.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda signo, frame: None)

    def serve(self) -> None:
        try:
            while self._controller_alive() and not self.controller_gone:
                self._reap()
                ready, _, _ = select.select(
                    [self.sock.fileno(), self._wake_r], [], [], PARENT_CHECK
                )
                if not ready and not self.idle_loaded:
                    self.idle_loaded = True
                    _import_all(LATER_MODULES)
                if self._wake_r in ready:
                    _drain(self._wake_r)
                if self.sock.fileno() in ready and not self._read():
                    return
        finally:
            self._end_children()

    def _end_children(self) -> None:
        """The controller is gone: so are its workers, with whatever they started."""
        for pid in self.children:
            self._signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.children and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.01)
            self.children.discard(pid)

    def _controller_alive(self) -> bool:
        # Started by the controller: re-parented means it is gone, even if
        # its pid is still a zombie that answers kill(0).
        return os.getppid() == self.controller_pid

    def _read(self) -> bool:
        try:
            data = self.sock.recv(1 << 16)
        except (ConnectionError, OSError):
            return False
        if not data:
            return False
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            request = json.loads(line)
            if request["op"] == "fork":
                self._fork(request)
            elif request["op"] == "preload":
                self._preload(list(request["modules"]))
            elif request["op"] == "signal":
                self._signal(int(request["pid"]), int(request["signo"]))
        return True

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            self.controller_gone = True  # it closed its end: the loop ends

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self._send({"op": "exit", "pid": pid, "rc": os.waitstatus_to_exitcode(status)})

    def _signal(self, pid: int, signo: int) -> None:
        # Only a child not yet reaped: its pid (and group id) cannot be reused.
        if pid not in self.children:
            return
        try:
            os.killpg(pid, signo)
            return
        except (ProcessLookupError, PermissionError):
            pass  # no group of its own after all: the worker alone
        try:
            os.kill(pid, signo)
        except ProcessLookupError:
            pass

    def _preload(self, names: list[str]) -> None:
        for name in names:
            # The controller's script would run again under another name.
            if name in self.preloaded or name in ("__main__", "__mp_main__"):
                continue
            self.preloaded.add(name)
            try:
                importlib.import_module(name)
            except (Exception, SystemExit) as exc:
                log.warning(
                    "fork server: could not preload %r (%r); "
                    "its workers import what they need themselves",
                    name,
                    exc,
                )
            if self.unsafe is None and threading.active_count() > 1:
                self.unsafe = name

    def _fork(self, request: dict[str, Any]) -> None:
        self._preload(list(request.get("preload", ())))
        if self.unsafe is not None:
            error = f"preloading {self.unsafe!r} started a thread: forking is not safe"
            self._send({"op": "failed", "id": request["id"], "error": error, "unsafe": self.unsafe})
            return
        # Buffered output would otherwise be written twice, once by the child.
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        server = os.getpid()  # the child's parent, which it watches
        try:
            pid = os.fork()
        except OSError as exc:
            self._send({"op": "failed", "id": request["id"], "error": f"fork failed: {exc}"})
            return
        if pid == 0:
            self._child(request, server)  # never returns
        # The child makes its own session (a process group the parent must
        # not make first: a group leader cannot start a session). A signal
        # sent before then reaches the worker alone (see _signal), which
        # has started nothing yet.
        self.children.add(pid)
        self._send({"op": "forked", "id": request["id"], "pid": pid})

    def _child(self, request: dict[str, Any], server: int) -> None:
        code: Any = 1
        try:
            # Leads a session, and so a process group, of its own, as a
            # spawned worker does (start_new_session): what its tasks start
            # ends with it, and an orphaned worker can find and kill them
            # (worker/group.py).
            os.setsid()
            signal.set_wakeup_fd(-1)
            for signo in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
                signal.signal(signo, signal.SIG_DFL)
            os.close(self._wake_r)
            os.close(self._wake_w)
            # The controller must see end of file when this server goes,
            # whatever its workers do.
            self.sock.close()
            os.chdir(request["cwd"])
            replace_environ(request["env"])
            code = run_worker({**request["worker"], "parent_pid": server})
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(_exit_status(code))


def replace_environ(env: dict[str, str]) -> None:
    """Make ``os.environ`` hold exactly ``env``, changing only what differs.

    Each change is a ``putenv`` or ``unsetenv`` call: clearing and filling
    it again took about 0.5 ms of a forked process's start, where a child
    mostly needs two or three variables of its parent's changed.
    """
    for name in [name for name in os.environ if name not in env]:
        del os.environ[name]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def run_worker(worker: dict[str, Any]) -> int:
    """In a fresh child: what ``python -m zmqworkers.worker`` does with the
    command line :func:`~zmqworkers.worker.args.local_worker_argv` makes of
    ``worker``, without parsing it."""
    from zmqworkers.worker import args
    from zmqworkers.worker.mp_authkey import adopt_controller_authkey

    sys.argv = [args.__file__, *args.local_worker_argv(**worker)]
    _reseed()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    adopt_controller_authkey()
    try:
        return args.run_local(worker)
    finally:
        _at_exit()


def _reseed() -> None:
    # Every child starts from the server's memory. Python's random module
    # reseeds itself after a fork; numpy's global generator does so only in
    # recent releases, and would otherwise give each worker the same numbers.
    # Only where the server has numpy.random loaded: elsewhere its first
    # import in the child seeds it afresh, and importing it here would put
    # milliseconds on the way to every forked worker's first result.
    random = sys.modules.get("numpy.random")
    if random is not None:
        random.seed()


def _at_exit() -> None:
    """What an interpreter does when it ends, which os._exit skips."""
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()  # joins the worker's non-daemon threads
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _exit_status(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    log.error("%s", code)  # sys.exit("message"), as the interpreter shows it
    return 1


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def load_worker_program() -> None:
    """Import what a worker needs on its way to its first task, once here,
    so that no child does it again."""
    _import_all(WORKER_MODULES)


def _import_all(names: tuple[str, ...]) -> None:
    for name in names:
        importlib.import_module(name)


def main(argv: list[str]) -> int:
    fd, controller_pid = int(argv[0]), int(argv[1])
    # Terminal signals are the controller's to act on, not this server's.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    load_worker_program()
    _import_all(SERVER_MODULES)
    ForkServer(sock, controller_pid).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
