"""pydidas on zmqworkers: one switch for pydidas's own runners, frames and workflows.

``install()`` puts zmqworkers' runners where pydidas looks for its
``AppRunner``: the workflow runner (``ExecuteWorkflowRunner``, and so
``run-pydidas-workflow``), the workflow and composite frames of its GUI,
and any code that imports ``pydidas.multiprocessing.AppRunner``
afterwards. Workflow apps run with :class:`~.workflow.WorkflowAppRunner`
(results travel as data, docs/pydidas.md); an app that shares
``multiprocessing`` values (the directory spy's) with pydidas's own
runner; every other app with zmqworkers' ``AppRunner``.

This package imports pydidas; ``import zmqworkers`` never imports it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

# Read by install() when it is called without arguments (and so by
# ``python -m zmqworkers.pydidas``): daemons connect to BIND and sign with
# the key in KEY_FILE; without them, local workers.
BIND_ENV = "ZMQWORKERS_PYDIDAS_BIND"
KEY_FILE_ENV = "ZMQWORKERS_PYDIDAS_KEY_FILE"

# Modules that import pydidas's AppRunner by name at their import.
_RUNNER_MODULES = (
    "pydidas.multiprocessing",
    "pydidas.apps.execute_workflow_runner",
    "pydidas.gui.frames.workflow_run_frame",
    "pydidas.gui.frames.composite_creator_frame",
    "pydidas.gui.frames.directory_spy_frame",
)
# The directory spy frame is switched too (it imports AppRunner from
# pydidas.multiprocessing), but its app goes on to pydidas's own runner: it
# shares multiprocessing.Value and Array objects with its worker, which reach
# a child process only when it is started with them (docs/pydidas.md).

_RUNNER_NAME = "AppRunner"
_saved: dict[str, Any] = {}
# ExecuteWorkflowRunner's methods that install() wraps, so that a run with a
# failed scan point writes no files and process_scan() raises.
_WORKFLOW_RUNNER_METHODS = ("_write_results_to_disk", "execute_workflow_in_apprunner")
_saved_methods: dict[str, Any] = {}


def install(
    bind: str | None = None,
    *,
    key: str | bytes | None = None,
    key_file: str | None = None,
    n_workers: int | None = None,
    warm_up: bool = True,
) -> None:
    """Make pydidas use zmqworkers' runners: local workers, or daemons at ``bind``.

    Without arguments, ``$ZMQWORKERS_PYDIDAS_BIND`` and
    ``$ZMQWORKERS_PYDIDAS_KEY_FILE`` choose daemons; unset, local workers
    (as many as pydidas's ``mp_n_workers`` setting, or the ``n_workers``
    pydidas code passes; ``n_workers`` here replaces the setting). Calling
    it again replaces the previous choice.

    With local workers, ``warm_up`` (the default) starts this process's
    fork server at once and has it import pydidas's apps in the background,
    while the caller goes on (a GUI builds its window meanwhile): the first
    run's workers then fork with pydidas imported, as every later run's do.
    """
    from zmqworkers.pydidas.workflow import ClusterSpec, runner_factory

    if bind is None and key is None and key_file is None:
        bind = os.environ.get(BIND_ENV) or None
        key_file = os.environ.get(KEY_FILE_ENV) or None
    if bind is None and (key is not None or key_file is not None):
        raise ValueError("a key is for daemons: give bind= (the address they connect to) too")
    if bind:
        where = ClusterSpec(bind=bind, key=key, key_file=key_file)
    else:
        where = ClusterSpec(n_workers)
        if warm_up:
            import zmqworkers

            zmqworkers.warm_up(["pydidas.apps"])
    import importlib

    importlib.import_module("pydidas.apps.execute_workflow_runner")
    pydidas_runner = _saved.get("pydidas.multiprocessing")
    if pydidas_runner is None:
        pydidas_runner = sys.modules["pydidas.multiprocessing"].AppRunner
    factory = runner_factory(where, pydidas_runner)
    for name in _RUNNER_MODULES:
        module = sys.modules.get(name)
        if module is None or not hasattr(module, "AppRunner"):
            continue
        if name not in _saved:
            _saved[name] = getattr(module, _RUNNER_NAME)
        setattr(module, _RUNNER_NAME, factory)
    _wrap_workflow_runner()


def _wrap_workflow_runner() -> None:
    """``process_scan()`` raises ``ScanPointFailed``, and writes nothing, after a failed point.

    pydidas's runner writes its files when the runner's ``finished`` comes,
    whatever happened; with a point missing, they would look complete.
    """
    from pydidas.apps.execute_workflow_runner import ExecuteWorkflowRunner

    from zmqworkers.pydidas.wire import run_failure

    if _saved_methods:
        return
    write = ExecuteWorkflowRunner._write_results_to_disk
    execute = ExecuteWorkflowRunner.execute_workflow_in_apprunner

    def write_unless_failed(self: Any) -> None:
        if run_failure(self._app) is None:
            write(self)
        elif self._loop is not None and self._loop.isRunning():
            self._loop.quit()

    def execute_and_raise(self: Any) -> None:
        execute(self)
        failure = run_failure(self._app)
        if failure is not None:
            raise failure

    _saved_methods.update(zip(_WORKFLOW_RUNNER_METHODS, (write, execute)))
    ExecuteWorkflowRunner._write_results_to_disk = write_unless_failed
    ExecuteWorkflowRunner.execute_workflow_in_apprunner = execute_and_raise


def uninstall() -> None:
    """Give pydidas its own ``AppRunner`` back."""
    for name, original in list(_saved.items()):
        module = sys.modules.get(name)
        if module is not None:
            setattr(module, _RUNNER_NAME, original)
        del _saved[name]
    if _saved_methods:
        from pydidas.apps.execute_workflow_runner import ExecuteWorkflowRunner

        for method, original in _saved_methods.items():
            setattr(ExecuteWorkflowRunner, method, original)
        _saved_methods.clear()


def installed() -> bool:
    return bool(_saved)


__all__ = ["BIND_ENV", "KEY_FILE_ENV", "install", "installed", "uninstall"]
