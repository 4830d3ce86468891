"""``WorkerController``: the seed's QThread API over the ZeroMQ engine.

The QThread drives a Qt-free :class:`~zmqworkers.client.driver.TaskDriver`
and turns its ``emit(name, *args)`` hook into ``sig_<name>`` signals. The
signals are emitted on the controller's thread: slots in other threads get
them queued (an event loop must run there), and a ``QSignalSpy`` records them
at once, with or without an event loop, as the seed's examples expect.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterable, Sequence
from numbers import Integral
from typing import Any

from qtpy import QtCore

from zmqworkers.client.driver import TaskDriver
from zmqworkers.controller.options import EngineOptions, build_options


class WorkerController(QtCore.QThread):
    """Run ``func(task, *args, **kwargs)`` for every task on local workers and daemons.

    ``n_workers`` local worker processes are started (default: one per
    core; ``0`` serves only daemons that connect to ``bind``). Signals:
    ``sig_progress(float)``, ``sig_results(task, result)``,
    ``sig_error(task, error)`` (a raising task still counts toward progress),
    ``sig_message_from_worker(str)`` and ``sig_finished()``; new:
    ``sig_workers_changed(list)`` with :meth:`workers` snapshots whenever a
    worker joins, leaves or is lost.
    """

    sig_progress = QtCore.Signal(float)
    sig_results = QtCore.Signal(object, object)
    sig_error = QtCore.Signal(object, object)
    sig_message_from_worker = QtCore.Signal(str)
    sig_finished = QtCore.Signal()
    sig_workers_changed = QtCore.Signal(object)

    def __init__(
        self,
        n_workers: int | None = None,
        function: Callable[..., Any] | None = None,
        func_args: tuple[Any, ...] = (),
        func_kwargs: dict[str, Any] | None = None,
        *,
        bind: str = EngineOptions.bind,
        key: str | bytes | None = None,
        key_file: str | os.PathLike[str] | None = None,
        prefetch: int = EngineOptions.prefetch,
        insecure: bool = EngineOptions.insecure,
        heartbeat_interval: float = EngineOptions.heartbeat_interval,
        heartbeat_misses: int = EngineOptions.heartbeat_misses,
        max_attempts: int = EngineOptions.max_attempts,
        replace_dead_workers: bool = EngineOptions.replace_dead_workers,
        stop_timeout: float = EngineOptions.stop_timeout,
        curve_dir: str | os.PathLike[str] | None = None,
        connection_file: str | os.PathLike[str] | None = None,
        max_message_size: int | None = EngineOptions.max_message_size,
        sign_buffers: bool = EngineOptions.sign_buffers,
        shared_memory: bool = EngineOptions.shared_memory,
        start_method: str = EngineOptions.start_method,
        preload: Sequence[str] = EngineOptions.preload,
        dashboard: str | None = EngineOptions.dashboard,
        forward_logs: str | None = EngineOptions.forward_logs,
        task_timeout: float | None = EngineOptions.task_timeout,
        max_tasks_per_worker: int | None = EngineOptions.max_tasks_per_worker,
        max_worker_memory: int | str | None = EngineOptions.max_worker_memory,
    ) -> None:
        super().__init__()
        options = build_options(
            key=key,
            key_file=key_file,
            prefetch=prefetch,
            curve_dir=curve_dir,
            connection_file=connection_file,
            max_message_size=max_message_size,
            bind=bind,
            insecure=insecure,
            heartbeat_interval=heartbeat_interval,
            heartbeat_misses=heartbeat_misses,
            max_attempts=max_attempts,
            replace_dead_workers=replace_dead_workers,
            stop_timeout=stop_timeout,
            sign_buffers=sign_buffers,
            shared_memory=shared_memory,
            start_method=start_method,
            preload=preload,
            dashboard=dashboard,
            forward_logs=forward_logs,
            task_timeout=task_timeout,
            max_tasks_per_worker=max_tasks_per_worker,
            max_worker_memory=max_worker_memory,
        )
        self._driver = TaskDriver(self._emit, options, self._emitter)
        self.n_workers = (os.cpu_count() or 1) if n_workers is None else n_workers
        if function is not None:
            self.change_function(function, *func_args, **(func_kwargs or {}))

    def _emit(self, name: str, *args: Any) -> None:
        getattr(self, f"sig_{name}").emit(*args)

    def _emitter(self, name: str) -> Callable[..., None] | None:
        """``sig_<name>``'s emit for one batch of results; None while nothing listens.

        Asked once per batch: an emit costs about as much as the rest of a
        tiny task's way through the controller, and one that no slot or spy
        receives tells nobody anything. A connection made during a batch
        gets the signals of the next one, as if it had come a moment later.
        """
        method = self._signal_methods().get(name)
        if method is not None and not self.isSignalConnected(method):
            return None
        return getattr(self, f"sig_{name}").emit  # type: ignore[no-any-return]

    def _signal_methods(self) -> dict[str, Any]:
        methods = self.__dict__.get("_methods")
        if methods is None:
            meta = self.metaObject()
            assert meta is not None
            methods = {}
            for i in range(meta.methodCount()):
                method = meta.method(i)
                name = bytes(method.name()).decode()
                if name.startswith("sig_"):
                    methods[name[4:]] = method
            self.__dict__["_methods"] = methods
        return methods  # type: ignore[no-any-return]

    # -- the seed's API -----------------------------------------------------

    @property
    def n_workers(self) -> int:
        """Local worker processes; a change takes effect when workers are next started."""
        return self._driver.options.n_workers

    @n_workers.setter
    def n_workers(self, number: int) -> None:
        if not isinstance(number, Integral) or isinstance(number, bool) or number < 0:
            raise ValueError(f"the number of workers must be an integer >= 0, not {number!r}")
        self._driver.options = self._driver.options.replace(n_workers=int(number))

    @property
    def progress(self) -> float:
        """Tasks done over tasks added in this run; -1 while there are none."""
        return self._driver.progress

    @property
    def address(self) -> str:
        """The address workers connect to (known once ``start()`` returned)."""
        return self._driver.address

    @property
    def dashboard_url(self) -> str | None:
        """The dashboard's link while running, if ``dashboard=`` was given."""
        return self._driver.dashboard_url

    def change_function(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Call ``func(task, *args, **kwargs)`` for tasks added from now on.

        Tasks not yet handed to a worker are dropped, as in the seed; a
        suspended controller stays suspended until ``restart()``.
        """
        self._driver.change_function(func, *args, **kwargs)

    def add_task(self, task: Any) -> None:
        self._driver.add_tasks([task])

    def add_tasks(self, tasks: Iterable[Any], are_stop_tasks: bool = False) -> None:
        """Add tasks; ``are_stop_tasks=True`` (pydidas's stop tasks) finalizes instead.

        pydidas queues ``None`` "stop tasks" that make each worker leave once
        the tasks before them are done; here that is :meth:`finalize_tasks`,
        and the stop tasks are neither run nor counted.
        """
        if are_stop_tasks:
            self._driver.finalize_tasks()
            return
        self._driver.add_tasks(tasks)

    def finalize_tasks(self) -> None:
        """Once every task is done, stop the workers and end the thread."""
        self._driver.finalize_tasks()

    def reset_task_list(self) -> None:
        """Drop every task not yet handed to a worker."""
        self._driver.reset_task_list()

    def suspend(self) -> None:
        """Hand out no more tasks; tasks already on workers finish and report."""
        self._driver.suspend()

    def restart(self) -> None:
        """Hand out tasks again (and start local workers again after a stop signal)."""
        self._driver.restart()

    @QtCore.Slot()
    def send_stop_signal(self) -> None:
        """Workers finish their current call and leave; tasks wait for ``restart()``."""
        self._driver.send_stop_signal()

    @QtCore.Slot()
    def stop(self, interrupt: bool = False) -> None:
        """End the thread: workers stop, tasks not yet done are dropped.

        Running calls finish first, unless ``interrupt=True``: then their
        worker processes are replaced at once (see :meth:`requestInterruption`).
        """
        self._driver.stop(interrupt)

    def is_alive(self) -> bool:
        return bool(self.isRunning())

    # -- what pydidas's frames and runners call ------------------------------

    def wait_for_processes_to_finish(self, timeout: float = 2.0) -> bool:
        """Wait up to ``timeout`` s for the run's workers to be stopped; True if they are."""
        return self._driver.served.wait(timeout)

    def requestInterruption(self, interrupt: bool = False) -> None:
        """Abort the run: queued tasks are dropped and workers stopped.

        Tasks already on workers are not waited for; ``sig_finished`` and
        ``finished`` are still emitted (an ``AppRunner`` also runs the app's
        post-run and emits its final state first). ``interrupt=True`` also
        ends the running calls now, by replacing their worker processes, as
        ``stop(interrupt=True)`` does.
        """
        self._driver.reset_task_list()
        self._driver.stop(interrupt)
        super().requestInterruption()

    def exit(self, code: int = 0) -> None:
        """End the run if one is going on, then ``QThread.exit(code)``.

        The thread runs no Qt event loop, so ``exit`` alone would not end
        it; pydidas's frames call it once ``finished`` came, where it only
        tidies up.
        """
        if self.isRunning():
            self.stop()
        super().exit(code)

    def deleteLater(self) -> None:
        """Schedule deletion; a running thread is stopped and joined first.

        Qt aborts the process when a running QThread is destroyed, so the
        run ends before the object may go.
        """
        if self.isRunning():
            self.shutdown()
        _running.discard(self)
        super().deleteLater()

    def workers(
        self, timeout: float = 10.0, include_departed: bool = False
    ) -> list[dict[str, Any]]:
        """One dict per connected worker (none when not running).

        Keys: ``id``, ``host``, ``pid``, ``local``, ``state`` (``idle``,
        ``busy``, ``draining``), ``current_task`` (the task object it runs),
        ``current_task_id``, ``in_flight``, ``tasks_done``,
        ``buffers_signed`` (False where array buffers are signed by length
        only, on a loopback, ipc or CURVE link) and ``last_heartbeat``
        (``time.monotonic()`` when it was last heard).
        ``include_departed`` puts first the last dicts of the workers of this
        run (or the last one) that left or were lost, whose ``state`` is
        ``"left"`` or ``"lost: <how>"``. Raises ``TimeoutError`` if the
        engine thread does not answer within ``timeout`` seconds.
        """
        return self._driver.workers(timeout, include_departed)

    def counters(self, timeout: float = 10.0) -> dict[str, Any]:
        """Counts of this run (kept after it ends).

        ``queued``, ``running``, ``done`` (results and errors), ``failed``,
        ``redispatched`` (tasks sent again after their worker was lost),
        ``workers_lost`` and ``dropped`` (messages dropped, by reason), with
        the engine's other counts (``submitted``, ``dispatched``, ...).
        """
        return self._driver.counters(timeout)

    def excuse_workers(
        self, prefix: str, timeout: float = 10.0, *, lost: Iterable[str] | None = None
    ) -> int:
        """Workers named ``prefix...`` are ended from outside (their batch job
        ended): their tasks count no attempt. Losses already recorded are taken
        back for the workers in ``lost`` only (None: all of the prefix).
        Returns the attempts taken back."""
        return self._driver.excuse_workers(prefix, timeout, lost=lost)

    # -- QThread ------------------------------------------------------------

    def start(self, *args: Any, **kwargs: Any) -> None:
        """Bind, start the local workers, then the thread that reports results."""
        if self.isRunning():
            return
        self._driver.start_engine()
        _keep_running(self)
        super().start(*args, **kwargs)

    def run(self) -> None:
        self._driver.serve()

    def shutdown(self, timeout: float = 30.0) -> bool:
        """``stop()`` and wait for the thread to end; True if it did."""
        self.stop()
        self._driver.served.wait(timeout)
        return bool(self.wait(int(timeout * 1000)))


# A running QThread whose last reference goes away aborts the process
# ("Destroyed while thread is still running"). The seed's examples drop
# theirs while the thread still winds down, so running controllers are kept
# here until the interpreter exits, which stops and joins them first.
_running: set[WorkerController] = set()


def _keep_running(controller: WorkerController) -> None:
    for done in [c for c in _running if _is_finished(c)]:
        _running.discard(done)
    _running.add(controller)


def _is_finished(controller: WorkerController) -> bool:
    try:
        return bool(controller.isFinished())
    except RuntimeError:
        return True  # its C++ object was deleted already


@atexit.register
def _stop_running_controllers() -> None:
    for controller in list(_running):
        try:
            if controller.isRunning():
                controller.shutdown(timeout=20.0)
        except RuntimeError:
            pass  # the C++ object is gone already
    _running.clear()
