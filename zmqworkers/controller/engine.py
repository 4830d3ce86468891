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
      │ HELLO/WELCOME, FUNC,     │ RESULTS, BYE,          │ HEARTBEAT, STOP,
      │ TASKS, CANCEL, STOP      │ HEARTBEAT, MESSAGE     │ INTERRUPT (broadcast)
      ▼                          ▼                        ▼
   workers: local subprocesses on loopback, or daemons on other hosts

Results reach the caller through ``EngineHandler`` callbacks, run on the
engine thread, which must never run user code there: ``Cluster`` completes
futures and queues their done-callbacks for a thread of its own, the
driver of the Qt face puts events on a queue its own thread serves.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from zmqworkers.controller.batching import Spec, make_spec
from zmqworkers.controller.loop import EngineHandler, EngineLoop
from zmqworkers.controller.options import EngineOptions, apply_bind_policy
from zmqworkers.controller.scheduler import TaskOptions
from zmqworkers.errors import EngineClosed

__all__ = ["Engine", "EngineHandler", "EngineOptions", "Spec", "TaskOptions", "make_spec"]


class Engine:
    """The controller: commands from any thread to the loop on a thread of its own.

    Every public method is a command, safe from any thread; the ones that
    read return snapshots. The loop (:class:`~.loop.EngineLoop`) owns the
    state and every socket.
    """

    def __init__(self, options: EngineOptions, handler: EngineHandler) -> None:
        options = self.options = apply_bind_policy(options)
        self.handler = handler
        self.address = ""
        self._id_lock = threading.Lock()
        self._next_id = 1
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._loop = EngineLoop(options, handler, self._commands, (self._wake_r, self._wake_w))
        self.id = self._loop.id
        self.host = self._loop.host
        self._thread: threading.Thread | None = None
        self._dashboard: Any = None  # a zmqworkers.dashboard.Dashboard, when asked for
        self.dashboard_url: str | None = None

    # -- commands (any thread) ----------------------------------------------

    def start(self, timeout: float = 30.0) -> str:
        """Bind the sockets, start local workers; return the task address."""
        self._thread = threading.Thread(
            target=self._loop.run, name="zmqworkers-engine", daemon=True
        )
        try:
            self._thread.start()
        except BaseException:
            self._thread = None
            self._loop.discard()  # the local workers it asked for go too
            raise
        if not self._loop.ready.wait(timeout):
            raise TimeoutError("the controller engine did not start")
        if self._loop.start_error is not None:
            raise self._loop.start_error
        self.address = self._loop.address
        if self.options.dashboard is not None:
            self._start_dashboard(self.options.dashboard)
        return self.address

    def _start_dashboard(self, address: str) -> None:
        # Imported here: the HTTP side (and prometheus_client) loads only when asked for.
        from zmqworkers.dashboard import Dashboard

        try:
            self._dashboard = Dashboard(address, self.status, controller=self.id)
        except BaseException:
            self.shutdown()
            raise
        self.dashboard_url = self._dashboard.url

    @property
    def local_address(self) -> str:
        """The address local workers dial: an ipc folder, or the task address."""
        return self._loop.sockets.local_address

    @property
    def endpoints(self) -> dict[str, str]:
        """The bound endpoint of each channel (tasks, results, control)."""
        return dict(self._loop.sockets.endpoints)

    @property
    def results_channel(self) -> int | str:
        """The result channel as welcomes name it: a port on the task address's host."""
        return self._loop.sockets.results_ep

    def new_task_ids(self, n: int) -> range:
        """Reserve ``n`` consecutive task ids (callers keep ranges, not lists)."""
        with self._id_lock:
            start = self._next_id
            self._next_id += n
        return range(start, start + n)

    def submit(
        self, spec: Spec, items: list[tuple[int, Any]], opts: TaskOptions | None = None
    ) -> None:
        """Queue tasks; ``opts`` (priority, timeout, attempts) for all of them."""
        self._command("submit", (spec, items, opts))

    def cancel_many(self, task_ids: list[int]) -> None:
        """Drop these tasks if still queued (no answer; running ones finish)."""
        self._command("cancel_many", task_ids)

    def cancel(self, task_ids: list[int], force: bool = False, timeout: float = 10.0) -> list[bool]:
        """Take tasks back before they run (from the queue, or from the worker
        that prefetched them); with ``force``, interrupt running ones by
        replacing their worker process. Whether each was cancelled."""
        control = self._loop.control
        return self.call(lambda: control.cancel(task_ids, force), timeout)  # type: ignore[no-any-return]

    def pause(self) -> None:
        self._command("pause", True)

    def resume(self) -> None:
        self._command("pause", False)

    def stop_workers(self) -> None:
        """Every worker finishes its current call, hands back the rest, leaves."""
        self._command("stop_workers", None)

    def start_workers(self, n: int | None = None) -> None:
        """Start (again) ``n`` local workers (default: the configured number)."""
        self._command("start_workers", n)

    def drop_pending(self, timeout: float = 10.0) -> list[int]:
        """Drop every task not yet handed to a worker; return their ids."""
        return self.call(self._loop.sched.drop_pending, timeout)  # type: ignore[no-any-return]

    def excuse_workers(
        self, prefix: str, timeout: float = 10.0, *, lost: Iterable[str] | None = None
    ) -> int:
        """Workers named ``prefix...`` are ended from outside (their batch job
        ended, or is drained on purpose): their tasks go back without counting
        an attempt. Losses already recorded are taken back only for the workers
        in ``lost`` (None: every worker named ``prefix...``), never a result
        that never arrived. Returns the attempts taken back now."""
        sched = self._loop.sched
        names = None if lost is None else tuple(lost)
        return self.call(lambda: sched.excuse(prefix, names), timeout)  # type: ignore[no-any-return]

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` on the engine thread and return what it returns."""
        if threading.current_thread() is self._thread:
            # From a handler callback on the engine thread: waiting for
            # ourselves would stall every heartbeat until the timeout.
            return fn()
        fut: Future[Any] = Future()
        self._command("call", (fn, fut))
        return fut.result(timeout)

    def workers(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """A snapshot of the connected workers."""
        return self.worker_snapshots(timeout)[0]

    def worker_snapshots(
        self, timeout: float = 10.0, include_departed: bool = False
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Snapshots of the connected workers, and of those that left or were lost."""
        sched = self._loop.sched

        def read() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            departed = [dict(d) for d in sched.departed.values()] if include_departed else []
            return [w.snapshot() for w in sched.workers.values()], departed

        if not self._loop.closed.is_set():
            try:
                return self.call(read, timeout)  # type: ignore[no-any-return]
            except EngineClosed:
                pass
        # Closed: no worker is connected, and the scheduler no longer
        # changes, so it can be read from here.
        return [], read()[1]

    def counters(self, timeout: float = 10.0) -> dict[str, Any]:
        """Tasks queued, running, redispatched; drops by reason; the engine's counts.

        ``failed`` counts every task that ended in an error, as the
        dashboard's: raised, lost with its workers, timed out, too large.
        """

        def read() -> dict[str, Any]:
            return {
                "queued": self._loop.sched.queued,
                "running": sum(len(w.in_flight) for w in self._loop.sched.workers.values()),
                "redispatched": self._loop.sched.redispatched,
                "attempts_excused": self._loop.sched.attempts_excused,
                "dropped": dict(self._loop.dropped),
                **dict(self._loop.stats),
                "failed": self._loop.telemetry.failed,
            }

        if not self._loop.closed.is_set():
            try:
                return self.call(read, timeout)  # type: ignore[no-any-return]
            except EngineClosed:
                pass
        return {
            "dropped": dict(self._loop.dropped),
            **dict(self._loop.stats),
            "redispatched": self._loop.sched.redispatched,
            "failed": self._loop.telemetry.failed,
        }

    def status(self, timeout: float = 10.0) -> dict[str, Any]:
        """One snapshot of what the dashboard shows: counts, workers, failures, throughput."""
        loop = self._loop

        def read() -> dict[str, Any]:
            sched = loop.sched
            now = time.monotonic()
            loop.telemetry.tick(now)  # an idle stretch shows as such in the throughput
            workers = [w.snapshot() for w in sched.workers.values()]
            for w in workers:
                w["last_heartbeat"] = round(now - w["last_heartbeat"], 2)
            return {
                "controller": self.id,
                "host": self.host,
                "address": self.address,
                "running": not loop.closed.is_set(),
                "paused": sched.paused,
                "queued": sched.queued,
                "in_flight": sum(len(w.in_flight) for w in sched.workers.values()),
                "retried": sched.redispatched,
                "workers": workers,
                "departed": [dict(d) for d in list(sched.departed.values())[-20:]][::-1],
                "dropped": dict(loop.dropped),
                "stats": dict(loop.stats),
                **loop.telemetry.snapshot(now),
            }

        if not loop.closed.is_set():
            try:
                return self.call(read, timeout)  # type: ignore[no-any-return]
            except EngineClosed:
                pass
        # Closed: nothing changes any more, so it can be read from here.
        return {**read(), "workers": [], "in_flight": 0, "queued": 0}

    def shutdown(self, timeout: float | None = None, *, grace: float | None = None) -> None:
        """Stop workers (each finishes its current call) and close everything.

        Local workers get ``grace`` seconds (default ``stop_timeout``) to
        leave; then they are terminated, and killed 3 s later.
        """
        if self._thread is None:
            self._loop.discard()
        if self._thread is None or self._loop.closed.is_set():
            self._stop_dashboard()
            return
        self._command("shutdown", grace)
        self._thread.join(timeout if timeout is not None else self.options.stop_timeout + 10)
        self._stop_dashboard()

    def _stop_dashboard(self) -> None:
        if self._dashboard is not None:
            self._dashboard.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _command(self, name: str, arg: Any) -> None:
        if self._loop.closed.is_set():
            raise EngineClosed("the controller engine is closed")
        self._commands.put((name, arg))
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the engine is awake already
        except OSError:
            pass  # closed under us by a shutdown in progress
