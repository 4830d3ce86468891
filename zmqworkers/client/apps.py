"""Apps: a job as an object with hooks, run serially or by ``AppRunner``.

An app holds parameters and a config (both plain data that copy) and a set
of ``multiprocessing_*`` hooks. ``AppRunner`` calls them on both sides::

    controller (a copy of the app)              every worker (rebuilt from
                                                class, params and config)
    multiprocessing_pre_run()
    multiprocessing_get_tasks() ──tasks──▶      multiprocessing_pre_run()   (once)
                                                per task: pre_cycle(task),
                                                  wait while not carryon(),
                                                  func(task)
    multiprocessing_store_results(task, r) ◀──  result (or a remote error)
    multiprocessing_post_run()

Only the class, the parameters and the config travel: whatever the
controller's copy builds in ``multiprocessing_pre_run`` (a large composite
image, say) stays on the controller. ``clone_mode`` is true on workers, so
an app can skip work there that only the controller needs.

This module never imports Qt: workers import it.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar

log = logging.getLogger(__name__)

# How often the worker looks at multiprocessing_carryon() and
# signal_processed_and_can_continue() while it waits on them.
POLL_SECONDS = 0.005
# Without tasks, a worker whose app does not carry on waits this long before
# answering "idle", so idle workers cost a few messages a second, not a spin.
IDLE_SECONDS = 0.05

AppT = TypeVar("AppT", bound="BaseApp")


class BaseApp:
    """Base class of apps that ``AppRunner`` runs on workers.

    Subclasses declare their parameters and defaults in ``default_params``
    and override the ``multiprocessing_*`` hooks; ``multiprocessing_func`` is
    the one they must write. ``run()`` does the same job serially.
    """

    default_params: ClassVar[dict[str, Any]] = {}

    def __init__(
        self, params: Mapping[str, Any] | None = None, *, clone_mode: bool = False, **kwargs: Any
    ) -> None:
        self.params: dict[str, Any] = copy.deepcopy(dict(self.default_params))
        for name, value in {**dict(params or {}), **kwargs}.items():
            self.set_param_value(name, value)
        self._config: dict[str, Any] = {}
        self.clone_mode = clone_mode

    # -- parameters and config -----------------------------------------------

    def get_param_value(self, name: str) -> Any:
        self._check_param(name)
        return self.params[name]

    def set_param_value(self, name: str, value: Any) -> None:
        self._check_param(name)
        self.params[name] = value

    def _check_param(self, name: str) -> None:
        if name not in self.default_params:
            known = ", ".join(sorted(self.default_params)) or "none"
            raise KeyError(
                f"{type(self).__name__} has no parameter {name!r} (its parameters: {known})"
            )

    def get_config(self) -> dict[str, Any]:
        """A copy of the config: state the workers need besides the parameters."""
        return copy.deepcopy(self._config)

    def set_config(self, config: Mapping[str, Any]) -> None:
        self._config = copy.deepcopy(dict(config))

    def copy(self: AppT, clone_mode: bool | None = None) -> AppT:
        """A deep copy: parameters, config and every other attribute."""
        new = copy.deepcopy(self)
        if clone_mode is not None:
            new.clone_mode = clone_mode
        return new

    # -- hooks ------------------------------------------------------------------

    def multiprocessing_pre_run(self) -> None:
        """Prepare a run; called on the controller's copy and once on each worker."""

    def multiprocessing_get_tasks(self) -> Iterable[Any]:
        """The tasks of a run (called on the controller)."""
        return []

    def multiprocessing_pre_cycle(self, index: Any) -> None:
        """Called on the worker before each task (``-1`` without tasks)."""

    def multiprocessing_carryon(self) -> bool:
        """Whether the worker may go on now; it waits, asking again, while False."""
        return True

    def multiprocessing_func(self, index: Any) -> Any:
        """Compute one task on a worker and return its result.

        Without tasks (``use_app_tasks=False``) it is called with ``-1`` and
        returns ``(index, result)``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define multiprocessing_func")

    def multiprocessing_store_results(self, index: Any, result: Any) -> None:
        """Called on the controller's copy with each task's result."""

    def multiprocessing_post_run(self) -> None:
        """Called on the controller's copy once every result is stored."""

    def must_send_signal_and_wait_for_response(self) -> str | None:
        """After each task: a text to send to the controller and then wait, or None.

        The text reaches ``sig_message_from_worker``; the worker then waits
        until :meth:`signal_processed_and_can_continue` says go on.
        """
        return None

    def signal_processed_and_can_continue(self) -> bool:
        return True

    # -- serial run -------------------------------------------------------------

    def run(self) -> None:
        """Run every task in this process, in order: the reference for ``AppRunner``."""
        self.multiprocessing_pre_run()
        for task in self.multiprocessing_get_tasks():
            result = run_app_task(self, task)
            self.multiprocessing_store_results(task, result)
        self.multiprocessing_post_run()


def run_app_task(app: BaseApp, task: Any) -> Any:
    """One task, the way a worker runs it: pre-cycle, wait to carry on, func, signal."""
    app.multiprocessing_pre_cycle(task)
    while not app.multiprocessing_carryon():
        time.sleep(POLL_SECONDS)
    result = app.multiprocessing_func(task)
    _signal_and_wait(app)
    return result


def _signal_and_wait(app: BaseApp) -> None:
    text = app.must_send_signal_and_wait_for_response()
    if text is None:
        return
    if not send_message(text):
        log.info("app message (not on a worker): %s", text)
    while not app.signal_processed_and_can_continue():
        time.sleep(POLL_SECONDS)


def send_message(text: str) -> bool:
    """From inside an app hook on a worker: send ``text`` to ``sig_message_from_worker``.

    Returns False (and sends nothing) when not running on a worker.
    """
    from zmqworkers.worker import current

    return current.send_message(text)


class AppProcessor:
    """The worker side of an app: ``call(task) -> result``, built once per worker.

    The app is rebuilt lazily on the first task, so a failing constructor
    or ``multiprocessing_pre_run`` fails the tasks (as remote errors), not
    the worker.
    """

    def __init__(
        self,
        app_class: type[BaseApp],
        params: Mapping[str, Any],
        config: Mapping[str, Any],
        use_tasks: bool = True,
    ) -> None:
        self.app_class = app_class
        self.params = params
        self.config = config
        self.use_tasks = use_tasks
        self._app: BaseApp | None = None
        self._setup_error: BaseException | None = None

    def app(self) -> BaseApp:
        if self._setup_error is not None:
            raise RuntimeError(
                f"{self.app_class.__name__} could not be set up on this worker: "
                f"{type(self._setup_error).__name__}: {self._setup_error}"
            ) from self._setup_error
        if self._app is None:
            try:
                app = self.app_class(self.params, clone_mode=True)
                app.set_config(self.config)
                app.multiprocessing_pre_run()
            except Exception as exc:
                self._setup_error = exc
                raise
            self._app = app
        return self._app

    def __call__(self, task: Any) -> Any:
        app = self.app()
        if self.use_tasks:
            return run_app_task(app, task)
        # Without tasks the controller sends ticks; each tick runs one cycle
        # if the app carries on, else reports idle after a short wait.
        deadline = time.monotonic() + IDLE_SECONDS
        while True:
            app.multiprocessing_pre_cycle(-1)
            if app.multiprocessing_carryon():
                index, result = app.multiprocessing_func(-1)
                _signal_and_wait(app)
                return (index, result)
            if time.monotonic() > deadline:
                return None
            time.sleep(POLL_SECONDS)


def app_call(
    app_class: type[BaseApp], params: Mapping[str, Any], config: Mapping[str, Any], **options: Any
) -> Callable[[Any], Any]:
    """The worker's ``"app"`` calling convention (see ``worker.calls.make_call``)."""
    return AppProcessor(app_class, params, config, **options)
