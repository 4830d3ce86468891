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

Apps of pydidas's protocol (``pydidas.core.BaseApp`` subclasses, or any
class with the same hooks) run too, without this module importing pydidas:
their ``params`` object (a ``ParameterCollection``) travels as it is, the
worker builds ``cls(params, clone_mode=True)``, sets ``_config`` and the
app's ``mp_manager``, and a result of ``None`` after a signal is replaced by
``get_latest_results()``, as pydidas's own worker does.

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
    # Attributes that ``copy(clone_mode=True)`` leaves out (pydidas's name):
    # state only the controller's app needs, such as a large composite.
    attributes_not_to_copy_to_app_clone: ClassVar[list[str]] = []

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
        """A deep copy: parameters, config and every other attribute.

        A clone (``clone_mode=True``) leaves out the attributes named in
        ``attributes_not_to_copy_to_app_clone``.
        """
        skip = set(self.attributes_not_to_copy_to_app_clone) if clone_mode else set()
        if skip:
            state = {k: v for k, v in self.__dict__.items() if k not in skip}
            new = copy.copy(self)
            new.__dict__ = copy.deepcopy(state)
        else:
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
    return _signal_and_wait(app, result)


def _signal_and_wait(app: Any, result: Any) -> Any:
    text = app.must_send_signal_and_wait_for_response()
    if text is None:
        return result
    if not send_message(text):
        log.info("app message (not on a worker): %s", text)
    while not app.signal_processed_and_can_continue():
        time.sleep(POLL_SECONDS)
    if result is None and callable(getattr(app, "get_latest_results", None)):
        # pydidas's convention: an app that answered a signal may leave its
        # result in its config for get_latest_results().
        return app.get_latest_results()
    return result


# The hooks an object needs to be run as an app (pydidas's BaseApp has them all).
APP_HOOKS = (
    "multiprocessing_pre_run",
    "multiprocessing_get_tasks",
    "multiprocessing_pre_cycle",
    "multiprocessing_carryon",
    "multiprocessing_func",
    "multiprocessing_store_results",
    "multiprocessing_post_run",
    "must_send_signal_and_wait_for_response",
    "signal_processed_and_can_continue",
    "copy",
    "get_config",
)


def check_app(app: Any) -> None:
    """Raise ``TypeError`` naming what ``app`` lacks to be run as an app."""
    if isinstance(app, BaseApp):
        return
    missing = [name for name in APP_HOOKS if not callable(getattr(app, name, None))]
    missing += [name for name in ("params", "_config") if not hasattr(app, name)]
    if missing:
        raise TypeError(
            f"AppRunner needs a zmqworkers.BaseApp or an app with pydidas's BaseApp "
            f"protocol; {type(app).__name__} lacks: {', '.join(missing)}"
        )


def app_state(app: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """What a worker rebuilds ``app`` from: parameters, config and worker options.

    Our apps send their parameters as a dict; an app of pydidas's protocol
    sends a copy of its own ``params`` object, which its constructor takes,
    and its ``mp_manager`` when it has one.
    """
    if isinstance(app, BaseApp):
        return dict(app.params), app.get_config(), {}
    options: dict[str, Any] = {"protocol": "pydidas"}
    manager = getattr(app, "mp_manager", None)
    if manager:
        options["mp_manager"] = manager
    return app.params.copy(), app.get_config(), options


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
        app_class: type[Any],
        params: Any,
        config: Mapping[str, Any],
        use_tasks: bool = True,
        protocol: str = "zmqworkers",
        mp_manager: Any = None,
    ) -> None:
        self.app_class = app_class
        self.params = params
        self.config = config
        self.use_tasks = use_tasks
        self.protocol = protocol
        self.mp_manager = mp_manager
        self._app: Any = None
        self._setup_error: BaseException | None = None

    def app(self) -> Any:
        if self._setup_error is not None:
            raise RuntimeError(
                f"{self.app_class.__name__} could not be set up on this worker: "
                f"{type(self._setup_error).__name__}: {self._setup_error}"
            ) from self._setup_error
        if self._app is None:
            try:
                app = self.app_class(self.params, clone_mode=True)
                if self.protocol == "pydidas":
                    app._config = dict(self.config)
                    if self.mp_manager:
                        app.mp_manager = self.mp_manager
                else:
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
                if self.protocol != "pydidas":
                    # pydidas's worker sends no signal without tasks; ours does.
                    result = _signal_and_wait(app, result)
                return (index, result)
            if time.monotonic() > deadline:
                return None
            time.sleep(POLL_SECONDS)


def app_call(
    app_class: type[Any], params: Any, config: Mapping[str, Any], **options: Any
) -> Callable[[Any], Any]:
    """The worker's ``"app"`` calling convention (see ``worker.calls.make_call``)."""
    return AppProcessor(app_class, params, config, **options)
