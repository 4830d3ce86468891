"""A session's helper thread, started before its work is known.

A worker's heartbeat and guard threads need the controller's welcome (the
session's keys and endpoints), but starting a thread takes a switch to it
and back under the GIL: about 0.6 ms each on a busy two-core machine, on
the way from the welcome to the first task. So each is started while the
hello waits for its connection and its answer, and handed its work once
the welcome came (or told to go, when none does).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

HEARTBEAT_THREAD = "zmqworkers-heartbeat"
GUARD_THREAD = "zmqworkers-guard"


class StandbyThread(threading.Thread):
    """A daemon thread that runs the one job :meth:`begin` hands it, then ends.

    ``wake``, given with the job, interrupts it (the job must also watch
    whatever stop event it was made with): :meth:`join` calls it first.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._wake: Callable[[], None] | None = None
        self._handed = False

    def run(self) -> None:
        job = self._jobs.get()
        if job is not None:
            job()

    def begin(self, job: Callable[[], None], wake: Callable[[], None] | None = None) -> None:
        """Hand the thread its job; once only, and before :meth:`join`."""
        if self._handed:
            raise RuntimeError(f"{self.name}: a job was handed already, or it was told to go")
        self._handed = True
        self._wake = wake
        self._jobs.put(job)

    def join(self, timeout: float | None = None) -> None:
        """Wake the job (or end a thread that never got one), then wait for it."""
        if self._wake is not None:
            self._wake()
        self._handed = True
        self._jobs.put(None)  # read only by a thread still waiting for a job
        super().join(timeout)


def standby(name: str) -> StandbyThread:
    """A started :class:`StandbyThread`."""
    thread = StandbyThread(name)
    thread.start()
    return thread
