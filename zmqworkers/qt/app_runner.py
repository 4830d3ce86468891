"""``AppRunner``: a ``WorkerController`` that runs a :class:`~zmqworkers.client.apps.BaseApp`."""

from __future__ import annotations

import functools
from typing import Any

from qtpy import QtCore

from zmqworkers.client.apps import BaseApp, check_app
from zmqworkers.client.driver import AppDriver
from zmqworkers.qt.controller import WorkerController


class AppRunner(WorkerController):
    """Run an app's tasks on workers; its results go into the runner's copy of the app.

    The runner works on a copy of ``app``: ``multiprocessing_pre_run`` runs on
    it, its class, parameters and config travel to every worker (local or
    remote), each result goes to its ``multiprocessing_store_results`` and at
    the end ``multiprocessing_post_run`` runs; then ``sig_final_app_state``
    carries a copy of it and ``sig_post_run_called`` is emitted.

    ``app`` is a ``zmqworkers.BaseApp`` (left alone: only the copy stores
    results) or an app of pydidas's protocol, such as a
    ``pydidas.core.BaseApp`` subclass, run as pydidas's own ``AppRunner``
    runs it: the given app is prepared (``multiprocessing_pre_run``) unless
    its ``_config["run_prepared"]`` is true, ``sig_results`` feeds its
    ``multiprocessing_store_results`` and ``sig_post_run_called`` its
    ``multiprocessing_post_run`` (queued to its thread, in order), and the
    runner's copy is a clone (``copy(clone_mode=True)``).

    pydidas's ``ExecuteWorkflowApp`` (found by its class, without importing
    pydidas) runs the way :mod:`zmqworkers.pydidas.wire` describes: each
    scan point's results come back as data, not through shared memory, and
    a point that raises ends the run (``error``).

    ``options`` are those of ``WorkerController`` (``bind``, ``key``, ...).
    With ``use_app_tasks=False`` each worker calls ``multiprocessing_func(-1)``
    while ``multiprocessing_carryon()`` holds, until ``stop()``.
    """

    sig_final_app_state = QtCore.Signal(object)
    sig_post_run_called = QtCore.Signal()

    def __init__(
        self,
        app: Any,
        n_workers: int | None = None,
        use_app_tasks: bool = True,
        **options: Any,
    ) -> None:
        check_app(app)
        for name in ("function", "func_args", "func_kwargs"):
            if name in options:
                raise TypeError(f"AppRunner runs the app's own function: {name}= does not apply")
        wire = _workflow_wire(app, use_app_tasks)
        if wire is not None and n_workers is None:
            n_workers = wire.default_n_workers()
        super().__init__(n_workers, **options)
        if isinstance(app, BaseApp):
            self._app = app.copy(clone_mode=False)
        else:
            if not app._config.get("run_prepared", False):
                app.multiprocessing_pre_run()
            self.sig_results.connect(app.multiprocessing_store_results)
            self.sig_post_run_called.connect(app.multiprocessing_post_run)
            copy = app.copy if wire is None else functools.partial(wire.copy_app, app)
            self._app = copy(clone_mode=True)
        options_now = self._driver.options
        if wire is None:
            self._driver = AppDriver(self._emit, options_now, self._app, bool(use_app_tasks))
        else:
            self._driver = wire.WorkflowDriver(self._emit, options_now, self._app, app)

    @property
    def error(self) -> BaseException | None:
        """What ended a workflow app's last run early (a scan point that raised), else None."""
        return getattr(self._driver, "error", None)

    def call_app_method(self, method_name: str, *args: Any, **kwargs: Any) -> Any:
        """Call a method of the runner's copy of the app (not while it runs)."""
        if self.isRunning():
            raise RuntimeError(
                f"cannot call {method_name!r} while the app runs: call stop() and wait() first"
            )
        method = getattr(self._app, method_name, None)
        if not callable(method):
            raise KeyError(f"{type(self._app).__name__} has no method {method_name!r}")
        return method(*args, **kwargs)

    def set_app_param(self, param_name: str, value: Any) -> None:
        """Set a parameter of the runner's copy (workers get it at the next start)."""
        self._app.set_param_value(param_name, value)

    def get_app(self) -> Any:
        """A copy of the runner's app, with whatever it has stored so far."""
        return self._app.copy()


def _workflow_wire(app: Any, use_app_tasks: bool) -> Any:
    """``zmqworkers.pydidas.wire``, with ``app`` switched to it, if ``app`` is a workflow app."""
    if not any(cls.__module__.startswith("pydidas.") for cls in type(app).__mro__):
        return None  # pydidas is not imported for any other app
    from zmqworkers.pydidas import wire

    if not wire.is_workflow_app(app):
        return None
    if not use_app_tasks:
        raise ValueError("a workflow runs its scan points as tasks: use_app_tasks must be True")
    wire.wire_app(app)
    return wire
