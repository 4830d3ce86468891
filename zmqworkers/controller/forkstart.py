"""Starting a fork server by forking the controller, while that is safe.

An exec'd fork server imports zmqworkers and numpy before it can fork the
first worker: most of a cold ``Cluster``'s wait for its first result. A
server forked from the controller has them (and the caller's modules)
already. That is safe only while the controller is a single thread: a
fork copies the calling thread alone, and the locks or socket state that
any other thread held would be copied half-way. So :func:`may_fork_here`
decides, and :mod:`.forkserver` execs the server whenever it says no.
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping

# The server passes cloudpickle on to the workers, which unpickle functions
# sent by value with it. Imported with the controller it costs about 0.6 ms;
# in a cold Cluster, just before the server's fork, it cost twice that.
import cloudpickle  # noqa: F401

# Imported here, with the controller, not in each forked server: it is
# what the server runs.
from zmqworkers.worker import zygote

# So is the worker program, imported with the controller rather than by a
# server just forked from it: there, every import writes to memory it still
# shares with the controller, and took twice as long (about 4.8 ms against
# 2.2, with 1,200 copy-on-write faults), all of it on the way to the first
# local worker's first result.
zygote.load_worker_program()

# Loaded, these mean a Qt application: its threads may come at any time.
QT_MODULES = ("PyQt5.QtCore", "PyQt6.QtCore", "PySide2.QtCore", "PySide6.QtCore")


def may_fork_here() -> bool:
    """Whether a fork server can be forked from this process now.

    Only while it runs a single Python thread, with no Qt and no open zmq
    context (whose I/O threads a fork would not copy). Threads that a library keeps fork-safe itself
    (OpenBLAS's, which numpy starts) are no reason to exec.
    """
    if not hasattr(os, "fork") or threading.active_count() != 1:
        return False
    if any(name in sys.modules for name in QT_MODULES):
        return False
    zmq = sys.modules.get("zmq")
    if zmq is not None and _os_threads() > 1:
        # A live context: its I/O threads start with its first socket (and
        # name themselves only once running, so their names would be a
        # racy test). A few milliseconds, once per fork server, and only
        # when some thread besides this one runs.
        context = zmq.Context
        if any(isinstance(o, context) and not o.closed for o in gc.get_objects()):
            return False
    return True


def _os_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 2  # cannot tell: look for contexts


class ForkedServerProcess:
    """A fork server forked from this process, with the ``Popen`` calls used on it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = 255  # reaped by another waitpid(-1) in this process
                return self.returncode
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"fork server {self.pid}", timeout or 0.0)
            time.sleep(0.005)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


def fork_server(
    theirs: socket.socket, ours: socket.socket, env: Mapping[str, str]
) -> ForkedServerProcess:
    """Fork this process into a fork server that serves on ``theirs``.

    The server then runs as an exec'd one does (its own session, stdin
    from /dev/null, ``env`` as its environment), without the controller's
    exit handlers and signal handlers, which its workers would otherwise
    run too. It never touches what else it inherited: like a worker that
    ``multiprocessing`` forks, it holds copies of the controller's open
    files until it ends.
    """
    controller = os.getpid()
    # Buffered output would otherwise be written twice, once by the server.
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid:
        return ForkedServerProcess(pid)
    code = 1
    try:
        ours.close()
        os.setsid()
        atexit._clear()
        for signo in signal.valid_signals():
            if callable(signal.getsignal(signo)):
                signal.signal(signo, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        zygote.replace_environ(dict(env))
        code = zygote.main([str(theirs.detach()), str(controller)])
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)
