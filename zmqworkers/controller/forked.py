"""A local worker forked by a fork server, as the launcher sees it (a ``Popen``).

The server is the worker's parent: it reaps the worker and reports how it
ended, and it sends the worker's signals. This object asks it for both.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from typing import Protocol

from zmqworkers.worker.group import pid_exists

log = logging.getLogger(__name__)


class Parent(Protocol):
    """What a worker's fork server does for it (:class:`~.forkserver.ForkServer`)."""

    exits: dict[int, int]  # how each reaped child ended, until taken

    def collect(self, timeout: float = 0.0) -> None: ...

    def send_signal(self, pid: int, signo: int) -> None: ...

    def alive(self) -> bool: ...


class ForkedProcess:
    """A worker forked by a fork server, with the ``Popen`` calls the launcher uses."""

    def __init__(self, server: Parent, pid: int) -> None:
        self._server = server
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self._server.collect()
            self._settle()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = 0.05 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
            self._server.collect(min(left, 0.05))
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signo: int) -> None:
        """Signal the worker's process group (what its calls started goes too)."""
        if self.poll() is None:
            self._server.send_signal(self.pid, signo)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _settle(self) -> None:
        rc = self._server.exits.pop(self.pid, None)
        if rc is not None:
            self.returncode = rc
        elif not self._server.alive() and not pid_exists(self.pid):
            # Its server died first: nobody can say how this worker ended
            # (it leaves by itself once its parent is gone).
            log.warning(
                "local worker %d ended after its fork server; exit status unknown", self.pid
            )
            self.returncode = 255
