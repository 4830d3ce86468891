"""The worker daemon's supervisor: N worker processes on one node.

::

    zmqworkers worker ADDRESS --processes N
      supervisor (this module): no sockets, no tasks
        ├── python -m zmqworkers.worker ADDRESS --name NAME-0   (Worker, loop.py)
        ├── python -m zmqworkers.worker ADDRESS --name NAME-1
        └── ...

Each child leads a session of its own, so what its tasks start is killed
with it (worker/group.py), and watches the supervisor: a child whose
supervisor was killed leaves. The supervisor replaces a child that crashed (bounded: at most
``max_restarts`` in ``restart_window`` seconds, so a worker that dies at once
on every start does not spin), forwards SIGTERM so each child drains (finishes
its running call, hands its prefetched tasks back), kills what has not drained
after ``drain_timeout``, and starts that same drain by itself
``drain_timeout`` seconds before ``lifetime`` ends, which is how a daemon
leaves before a batch system's walltime kills it.

Every event is one log line that starts ``zmqworkers-daemon event=NAME`` with
``key=value`` fields, for grep and log collectors.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zmqworkers.security.keys import KEY_ENV
from zmqworkers.worker.group import kill_group
from zmqworkers.worker.loop import EXIT_REFUSED
from zmqworkers.worker.mp_authkey import MP_AUTHKEY_ENV
from zmqworkers.worker.options import (
    DRAIN_ENV,
    EXIT_INTERRUPTED,
    EXIT_MEMORY,
    EXIT_RECYCLED,
    SUPERVISOR_ENV,
)
from zmqworkers.worker.silence import EXIT_NO_CONTROLLER

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1


@dataclass
class DaemonOptions:
    """How the supervisor behaves. Times are in seconds."""

    processes: int = 1
    # Drain this long before the lifetime ends; None: run until stopped.
    lifetime: float | None = None
    # After SIGTERM (or the lifetime's drain), children still running after
    # this long are killed; their tasks go back to the controller as lost.
    drain_timeout: float = 30.0
    max_restarts: int = 10
    restart_window: float = 60.0
    name: str | None = None
    # Passed on to every child's command line (prefetch, death timeout, ...).
    child_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # Rewritten every second (for container probes): see check_status().
    status_file: str | None = None


def event(name: str, **fields: Any) -> None:
    """Log one greppable line: ``zmqworkers-daemon event=NAME k=v ...``."""
    parts = [f"zmqworkers-daemon event={name}"]
    parts += [f"{k}={_quote(v)}" for k, v in fields.items()]
    log.info(" ".join(parts))


def _quote(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if (not text or any(c.isspace() for c in text)) else text


class Supervisor:
    """Starts, watches and drains the worker processes of one daemon."""

    def __init__(self, address: str, key: bytes, options: DaemonOptions) -> None:
        if options.processes < 1:
            raise ValueError(f"processes must be 1 or more, not {options.processes}")
        self.address = address
        self.key = key
        self.options = options
        self.children: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}  # pid: (slot, proc)
        self._restarts: collections.deque[float] = collections.deque()
        # Set from a signal handler: a plain attribute, as an Event's lock
        # could be held by the very frame the handler interrupted.
        self._drain_reason: str | None = None
        self._started = time.monotonic()
        self._exit_code = 0
        self._generation: collections.Counter[int] = collections.Counter()
        self._state = "starting"
        self._status_written = 0.0

    def request_drain(self, reason: str) -> None:
        """Drain and leave (safe to call from a signal handler)."""
        if self._drain_reason is None:
            self._drain_reason = reason

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: Any) -> None:
            self.request_drain(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    # -- children ----------------------------------------------------------

    def _command(self, slot: int) -> list[str]:
        cmd = [sys.executable, "-m", "zmqworkers.worker", self.address]
        if self.options.name:
            # A replacement gets a name of its own: the controller remembers
            # the message numbers each worker id has used, and would take a
            # new process's first messages under an old id for replays.
            generation = self._generation[slot]
            suffix = f"r{generation}" if generation else ""
            cmd += ["--name", f"{self.options.name}-{slot}{suffix}"]
        self._generation[slot] += 1
        return cmd + list(self.options.child_args)

    def _start(self, slot: int) -> None:
        env = dict(os.environ)
        env.update(self.options.env)
        # In the environment, never in argv, where the process list shows it.
        env[KEY_ENV] = self.key.decode()
        env.pop(MP_AUTHKEY_ENV, None)  # a controller's authkey is for its local workers
        # A child hands its running call back a moment before the supervisor
        # would kill it, so the goodbye goes out in time.
        env[DRAIN_ENV] = str(max(0.5, self.options.drain_timeout - 1.0))
        env[SUPERVISOR_ENV] = str(os.getpid())
        proc = subprocess.Popen(
            self._command(slot),
            env=env,
            stdin=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
        )
        self.children[proc.pid] = (slot, proc)
        event("child_start", pid=proc.pid, slot=slot)

    def _may_restart(self, now: float) -> bool:
        window = self.options.restart_window
        while self._restarts and now - self._restarts[0] > window:
            self._restarts.popleft()
        return len(self._restarts) < self.options.max_restarts

    def _reap(self) -> list[tuple[int, int, int]]:
        """(slot, pid, code) of every child that has exited."""
        gone = []
        for pid, (slot, proc) in list(self.children.items()):
            code = proc.poll()
            if code is not None:
                del self.children[pid]
                kill_group(pid)  # what its tasks left running
                gone.append((slot, pid, code))
        return gone

    # -- main --------------------------------------------------------------

    def run(self) -> int:
        opts = self.options
        event(
            "start",
            pid=os.getpid(),
            address=self.address,
            processes=opts.processes,
            lifetime=opts.lifetime if opts.lifetime is not None else "none",
            drain_timeout=opts.drain_timeout,
        )
        for slot in range(opts.processes):
            self._start(slot)
        drain_at = None
        if opts.lifetime is not None:
            drain_at = self._started + max(0.0, opts.lifetime - opts.drain_timeout)
        self._state = "running"
        try:
            while self.children:
                self._write_status()
                if drain_at is not None and time.monotonic() >= drain_at:
                    self.request_drain("lifetime")
                if self._drain_reason is not None:
                    break
                time.sleep(POLL_SECONDS)
                self._watch()
            if self._drain_reason is not None:
                self._drain_children()
        finally:
            self._kill_all()
        self._state = "exited"
        self._write_status(force=True)
        event("exit", code=self._exit_code)
        return self._exit_code

    def _watch(self) -> None:
        now = time.monotonic()
        for slot, pid, code in self._reap():
            event("child_exit", pid=pid, slot=slot, code=code)
            if code == EXIT_REFUSED:
                # Refused for good (another version): starting it again
                # would be refused again.
                self._exit_code = EXIT_REFUSED
                event("child_refused", pid=pid, slot=slot)
                continue
            if code == 0:
                continue  # it chose to leave: not a crash
            if code in (EXIT_RECYCLED, EXIT_INTERRUPTED, EXIT_MEMORY) and not self._drain_reason:
                # Replaced by design (task count or memory, a call cancelled
                # or timed out): no crash, so no restart counted.
                self._start(slot)
                event("child_renewed", slot=slot, old_pid=pid, code=code)
                continue
            if code == EXIT_NO_CONTROLLER:
                # Its death timeout ran out: not a crash, but the daemon
                # says so in its own status once every process has left.
                self._exit_code = self._exit_code or EXIT_NO_CONTROLLER
                continue
            if not self._may_restart(now):
                event(
                    "restart_limit",
                    slot=slot,
                    restarts=len(self._restarts),
                    window=self.options.restart_window,
                )
                self._exit_code = self._exit_code or 1
                continue
            self._restarts.append(now)
            self._start(slot)
            event("child_replaced", slot=slot, old_pid=pid)

    def _write_status(self, force: bool = False) -> None:
        path = self.options.status_file
        now = time.time()
        if not path or (not force and now - self._status_written < 1.0):
            return
        self._status_written = now
        status = {
            "pid": os.getpid(),
            "state": self._state,
            "address": self.address,
            "children": sorted(self.children),
            "processes": self.options.processes,
            "restarts": len(self._restarts),
            "updated": now,
        }
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            Path(tmp).write_text(json.dumps(status))
            os.replace(tmp, path)
        except OSError as exc:
            log.debug("cannot write status file %s: %s", path, exc)

    def _drain_children(self) -> None:
        self._state = "draining"
        self._write_status(force=True)
        timeout = self.options.drain_timeout
        event("drain", reason=self._drain_reason, children=len(self.children), timeout=timeout)
        for _, proc in self.children.values():
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.children and time.monotonic() < deadline:
            # Kept fresh while draining, or a liveness probe would kill
            # the daemon in the middle of a long drain.
            self._write_status()
            for slot, pid, code in self._reap():
                event("child_exit", pid=pid, slot=slot, code=code)
            time.sleep(POLL_SECONDS / 2)
        if self.children:
            event("drain_timeout", children=len(self.children))
        else:
            event("drained", seconds=f"{timeout - (deadline - time.monotonic()):.2f}")

    def _kill_all(self) -> None:
        for pid, (slot, proc) in list(self.children.items()):
            if proc.poll() is None:
                _signal(proc, signal.SIGKILL)
                event("child_killed", pid=pid, slot=slot)
            proc.wait()
            kill_group(pid)
        self.children.clear()


def _signal(proc: subprocess.Popen[bytes], signo: int) -> None:
    try:
        proc.send_signal(signo)
    except ProcessLookupError:
        pass


def run_daemon(address: str, key: bytes, options: DaemonOptions) -> int:
    """Run a supervisor until it is drained or every child has left."""
    supervisor = Supervisor(address, key, options)
    supervisor.install_signal_handlers()
    return supervisor.run()


def child_args(
    *,
    prefetch: int,
    heartbeat_interval: float,
    heartbeat_misses: int,
    death_timeout: float | None,
    log_level: str,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command-line options every child of a daemon gets."""
    args = [
        "--prefetch",
        str(prefetch),
        "--heartbeat-interval",
        str(heartbeat_interval),
        "--heartbeat-misses",
        str(heartbeat_misses),
    ]
    if death_timeout is not None:
        args += ["--death-timeout", str(death_timeout)]
    return ["--log-level", log_level, *args, *extra]


def check_status(path: str, max_age: float, ready: bool) -> tuple[bool, str]:
    """Judge a status file: (healthy, why). For liveness and readiness probes.

    Alive: the file was rewritten within ``max_age`` seconds and the
    supervisor has not exited. Ready as well: running (not draining) with at
    least one worker process.
    """
    try:
        status = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        return False, f"no readable status in {path}: {exc}"
    age = time.time() - float(status.get("updated", 0))
    state = status.get("state")
    n = len(status.get("children", []))
    summary = f"state={state} children={n} age={age:.1f}s restarts={status.get('restarts')}"
    if age > max_age:
        return False, f"stale: {summary}"
    if state == "exited":
        return False, summary
    if ready and (state != "running" or n == 0):
        return False, f"not ready: {summary}"
    return True, summary
