"""Local workers: the worker program as subprocesses of the controller.

:class:`LocalWorkers` starts them, notices their exits (and replaces the
ones that die, if asked) and ends those still running at shutdown. Only
the engine thread uses it. With the ``"forkserver"`` start method (the
default on Linux) the processes are forked by :mod:`.forkserver`, which
hands back stand-ins for ``Popen``; ``"spawn"`` starts each with ``Popen``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from zmqworkers.controller import forkserver
from zmqworkers.controller.forked import ForkedProcess
from zmqworkers.controller.options import EngineOptions
from zmqworkers.controller.scheduler import WorkerState
from zmqworkers.controller.segments import end_segments
from zmqworkers.protocol.segments import SegmentLink
from zmqworkers.security.keys import KEY_ENV
from zmqworkers.worker.args import local_worker_argv
from zmqworkers.worker.group import kill_group
from zmqworkers.worker.mp_authkey import MP_AUTHKEY_ENV
from zmqworkers.worker.options import (
    EXIT_INTERRUPTED,
    EXIT_MEMORY,
    EXIT_RECYCLED,
    format_size,
)

log = logging.getLogger(__name__)

# A local worker process: spawned, or forked by the fork server.
WorkerProcess = subprocess.Popen[bytes] | ForkedProcess


def local_worker_env(key: bytes, extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A local worker's environment: ours, the key, the authkey, then ``extra_env``."""
    env = dict(os.environ)
    env[KEY_ENV] = key.decode()
    env[MP_AUTHKEY_ENV] = bytes(multiprocessing.current_process().authkey).hex()
    if extra_env:
        env.update(extra_env)
    return env


def start_local_worker(
    address: str,
    key: bytes,
    *,
    prefetch: int = 1,
    extra_env: Mapping[str, str] | None = None,
    limits: Mapping[str, int | None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start one worker process connected to ``address``.

    ``limits``: its ``max_tasks`` and ``max_memory``, when set. The key
    travels in the environment, never in argv, where any user of the
    machine could read it from the process list. The worker leads a session
    of its own, so what its tasks start is killed with it (worker/group.py).
    """
    env = local_worker_env(key, extra_env)
    argv = local_worker_argv(address, os.getpid(), prefetch, **(limits or {}))
    cmd = [sys.executable, "-m", "zmqworkers.worker", *argv]
    return subprocess.Popen(
        cmd, env=env, stdin=subprocess.DEVNULL, close_fds=True, start_new_session=True
    )


def describe_exit(returncode: int, max_memory: int | None = None) -> str:
    """Say how a process ended, and the likely cause where there is one."""
    if returncode == EXIT_MEMORY:
        limit = f" of {format_size(max_memory)}" if max_memory else ""
        return f"exceeded the memory limit{limit} during a task"
    if returncode == EXIT_RECYCLED:
        return "left to be replaced (max_tasks_per_worker or max_worker_memory)"
    if returncode == EXIT_INTERRUPTED:
        return "ended to interrupt its task"
    if returncode < 0:
        signo = -returncode
        try:
            name = signal.Signals(signo).name
        except ValueError:
            name = f"signal {signo}"
        hint = {
            "SIGKILL": ": out of memory, or killed by hand?",
            "SIGSEGV": ": a crash in compiled code?",
            "SIGABRT": ": an abort in compiled code?",
            "SIGBUS": ": a bad memory mapping?",
        }.get(name, "")
        return f"killed by {name}{hint}"
    if returncode == 0:
        return "exited with code 0 before it was asked to"
    return f"exited with code {returncode}"


@dataclass(frozen=True)
class Exit:
    """A local worker process that ended, whether it was asked to, and whether
    it is replaced by design (recycled, or ended to interrupt its task)."""

    pid: int
    how: str
    expected: bool
    renew: bool = False


# A crash loop ends here: past this many replacements a dead worker stays dead.
MAX_REPLACEMENTS = 100


class LocalWorkers:
    """The local worker processes of one engine, by pid."""

    def __init__(
        self,
        key: bytes,
        prefetch: int,
        env: Mapping[str, str],
        target: int,
        start_method: str = "spawn",
        preload: Sequence[str] = (),
        max_tasks: int | None = None,
        max_memory: int | None = None,
    ) -> None:
        self._key = key
        self._prefetch = prefetch
        self._env = dict(env)
        self._start_method = start_method
        self._preload = tuple(preload)
        self.procs: dict[int, WorkerProcess] = {}
        self.target = target  # how many should run
        self._expected: set[int] = set()
        self._interrupted: set[int] = set()
        # Segment links of sessions that ended while their process still ran.
        self._segments: dict[int, SegmentLink] = {}
        self._replacements = 0
        self.max_memory = max_memory
        self._limits = {"max_tasks": max_tasks, "max_memory": max_memory}
        # Asked of the fork server before the controller had bound (start_early).
        self._early: forkserver.PendingForks | None = None

    @classmethod
    def for_engine(cls, options: EngineOptions) -> LocalWorkers:
        return cls(
            options.key,
            options.prefetch,
            options.worker_env,
            options.n_workers,
            options.start_method,
            options.preload,
            options.max_tasks_per_worker,
            options.max_worker_memory,
        )

    def __len__(self) -> int:
        return len(self.procs)

    def start_early(self, address: str, n: int) -> None:
        """Ask the fork server for ``n`` workers dialling ``address``, not bound yet.

        They fork and start while the controller binds (they dial until it
        has), rather than after it. :meth:`start` takes them.
        """
        if self._start_method != "forkserver" or n <= 0:
            return
        try:
            self._early = forkserver.request_workers(self._request(address), n, early=True)
        except (forkserver.ForkServerUnavailable, OSError) as exc:
            log.debug("no early local workers (%s): they start after the bind", exc)

    def start(self, address: str, n: int) -> None:
        pending = self._take_early()
        if pending is not None and (pending.request.address != address or len(pending.ids) != n):
            # Bound elsewhere after all (no ipc): those dial nothing. Or
            # another number is wanted now: asked for again, in that number.
            self._end_early(pending)
            pending = None
        if self._start_method == "forkserver" and n > 0:
            forked, error = forkserver.fork_workers(self._request(address), n, pending)
            for proc in forked:
                self.procs[proc.pid] = proc
            n -= len(forked)
            if error is not None:
                log.warning("local workers: %s; spawning them instead", error)
                self._start_method = "spawn"
        for _ in range(n):
            spawned = start_local_worker(
                address,
                self._key,
                prefetch=self._prefetch,
                extra_env=self._env,
                limits=self._limits,
            )
            self.procs[spawned.pid] = spawned

    def _request(self, address: str) -> forkserver.WorkerRequest:
        env = local_worker_env(self._key, self._env)
        return forkserver.WorkerRequest(
            address, self._prefetch, env, self._preload, self._env, self._limits
        )

    def _take_early(self) -> forkserver.PendingForks | None:
        pending, self._early = self._early, None
        return pending

    def _end_early(self, pending: forkserver.PendingForks) -> None:
        """Workers asked for early that will not be used: ended, as asked to."""
        try:
            forked, _ = pending.server.take_forks(pending.ids)
        except forkserver.ForkServerUnavailable:
            return  # the server is gone, and its children with it
        for proc in forked:
            self.procs[proc.pid] = proc
            self._expected.add(proc.pid)
            proc.kill()

    def stopping(self) -> None:
        """Every running process was asked to leave: its exit is no failure."""
        self.target = 0
        self._expected.update(self.procs)

    def interrupt(self, pid: int) -> bool:
        """Kill a worker process (and its group) to stop its call; it is replaced.

        Killed, not asked: its main thread is in the user's call, which may
        hold the GIL or wait on a stuck file system.
        """
        proc = self.procs.get(pid)
        if proc is None or proc.poll() is not None:
            return False
        self._interrupted.add(pid)
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        kill_group(pid)
        return True

    def end_segments_at_exit(self, worker: WorkerState, link: SegmentLink) -> None:
        """A session's segments go; if its local process still runs, once it has ended.

        A process killed to interrupt it (or lost while alive) may be writing
        a result segment in the moment its session ends: removed before it
        is gone, that one would stay until the engine closes.
        """
        proc = self.procs.get(worker.pid) if worker.local else None
        if proc is not None and proc.poll() is None:
            self._segments[worker.pid] = link
        else:
            end_segments(link)

    def asked_to_leave(self, pid: int) -> bool:
        """Whether this local process was asked to leave (by a stop) and has not yet."""
        return pid in self._expected and pid in self.procs

    def start_up_to(self, address: str, want: int) -> None:
        self.target = want
        # Workers still draining after a stop are on their way out: not counted.
        alive = len(
            [p for pid, p in self.procs.items() if p.poll() is None and pid not in self._expected]
        )
        self.start(address, max(0, want - alive))

    def reap(self) -> list[Exit]:
        """The processes that ended since the last call."""
        out = []
        for pid, proc in list(self.procs.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del self.procs[pid]
            kill_group(pid)  # what its tasks left running
            if (link := self._segments.pop(pid, None)) is not None:
                end_segments(link)
            expected = pid in self._expected
            self._expected.discard(pid)
            killed = pid in self._interrupted
            self._interrupted.discard(pid)
            renew = killed or rc in (EXIT_RECYCLED, EXIT_INTERRUPTED, EXIT_MEMORY)
            how = "ended to interrupt its task" if killed else describe_exit(rc, self.max_memory)
            out.append(Exit(pid, how, expected, renew and not expected))
        return out

    def may_replace(self) -> bool:
        if self._replacements >= MAX_REPLACEMENTS:
            return False
        self._replacements += 1
        return True

    def how_gone(self, pid: int) -> str | None:
        """How a local worker ended, if it did within a moment."""
        proc = self.procs.get(pid)
        if proc is None:
            return None
        # A local worker's connection closes as its process dies: wait a
        # moment for the exit status, which says far more.
        try:
            return describe_exit(proc.wait(0.2), self.max_memory)
        except subprocess.TimeoutExpired:
            return None

    def end_all(self) -> None:
        """End the processes that did not leave in time: first politely."""
        pending = self._take_early()
        if pending is not None:
            self._end_early(pending)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 3
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            kill_group(proc.pid)
        self.procs.clear()
        for link in self._segments.values():
            end_segments(link)
        self._segments.clear()
