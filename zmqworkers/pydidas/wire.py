"""A workflow app whose results travel as data, and the driver that runs it.

pydidas's ``ExecuteWorkflowApp`` has its workers write each scan point's
node results into ``SharedMemory`` slots and sends the controller only the
slot's number; the store then reads the slot and frees it. That cannot reach
another host, and it also goes wrong on one: pydidas's
``ExecuteWorkflowRunner`` connects the store a second time, so the second
store reads a slot a worker has already refilled with a later point, and
the store copies its views of a slot after freeing it.

Here each result is the point's data itself (:func:`frames.process_point`),
and storing it is idempotent. :func:`wire_app` switches an app's store to
that; :class:`WorkflowDriver` is what ``zmqworkers.AppRunner`` drives when it
is given a workflow app, so the plain ``AppRunner``, ``install()`` and
:class:`~.workflow.WorkflowAppRunner` all take this one path.

A scan point that raises on a worker ends the run: the points not yet
handed out are dropped, the error is kept (:class:`ScanPointFailed`) on the
driver and in the given app's ``_config["wire"]["failed"]``, and whoever
writes files checks it first (docs/pydidas.md).

No Qt here, and pydidas only inside functions.
"""

from __future__ import annotations

import logging
import types
import uuid
from typing import Any

import numpy as np

from zmqworkers.client.driver import AppDriver, Emit
from zmqworkers.controller.engine import make_spec
from zmqworkers.controller.options import EngineOptions
from zmqworkers.pydidas import frames

log = logging.getLogger(__name__)

# The module and name of pydidas's workflow app; subclasses count too.
WORKFLOW_APP = ("pydidas.apps.execute_workflow_app", "ExecuteWorkflowApp")


def is_workflow_app(app: Any) -> bool:
    """Whether ``app`` is a pydidas ``ExecuteWorkflowApp``, found without importing pydidas."""
    return any(
        (getattr(cls, "__module__", ""), cls.__name__) == WORKFLOW_APP for cls in type(app).__mro__
    )


class ScanPointFailed(RuntimeError):
    """A scan point raised on a worker: the run ended there and its results are incomplete.

    ``index`` is the scan point and ``__cause__`` (also ``remote``) the
    worker's error, a :class:`zmqworkers.RemoteError` with its traceback.
    """

    def __init__(self, index: Any, remote: BaseException) -> None:
        first = str(remote).split("\n", 1)[0]
        super().__init__(f"scan point {index} failed: {first}")
        self.index = index
        self.remote = remote
        self.__cause__ = remote

    def __reduce__(self) -> Any:
        return (type(self), (self.index, self.remote))


def store_point(index: int, frame: Any, state: dict[str, Any], results: Any | None = None) -> bool:
    """Store one point's ``(arrays, metadata)`` into pydidas's ``WorkflowResults``.

    ``state`` remembers across calls whether the frame metadata is stored.
    Returns False for a point whose input could not be read. Storing the
    same point twice writes the same data twice.
    """
    if results is None:
        from pydidas.workflow import WorkflowResults

        results = WorkflowResults()
    if frame is frames.UNREADABLE:
        return False
    arrays, metadata = frame
    if not state.get("metadata_stored"):
        if metadata is None:
            # Every worker sends the metadata with its first point, and its
            # points arrive in order, so this is only a fallback.
            metadata = _default_metadata(arrays)
        results.store_frame_metadata(metadata)
        state["metadata_stored"] = True
        state["metadata"] = metadata
    results.store_results(int(index), arrays)
    return True


def _default_metadata(arrays: dict[int, np.ndarray]) -> dict[int, dict[str, Any]]:
    from pydidas.core.utils.dataset_utils import get_default_property_dict

    return {node_id: get_default_property_dict(arr.shape) for node_id, arr in arrays.items()}


# -- the app whose results are data ------------------------------------------


class _WireStore:
    """The store, message and post-run hooks a workflow app gets from :func:`wire_app`."""

    _config: dict[str, Any]
    clone_mode: bool

    def multiprocessing_store_results(self, index: Any, frame: Any) -> None:
        if self.clone_mode:
            return
        from pydidas.workflow import WorkflowResults
        from pydidas.workflow.result_io import ProcessingResultIoMeta

        state = self._config.setdefault("wire", {})
        if not store_point(index, frame, state):
            _status(
                "File reading error during processing of scan index "
                f"#{index}. (filename: {_filename(index)})"
            )
            return
        if self.get_param_value("autosave_results"):  # type: ignore[attr-defined]
            arrays = frame[0]
            if not self._config.get("export_files_prepared"):
                WorkflowResults().prepare_files_for_saving(
                    self.get_param_value("autosave_directory"),  # type: ignore[attr-defined]
                    self.get_param_value("autosave_format"),  # type: ignore[attr-defined]
                )
                self._config["export_files_prepared"] = True
                # The savers write the axes and units from the first frame
                # they get, so it goes with its metadata.
                arrays = _with_metadata(arrays, state["metadata"])
            ProcessingResultIoMeta.export_frame_to_active_savers(int(index), arrays)
        self.sig_results_updated.emit()  # type: ignore[attr-defined]

    def received_signal_message(self, message: str) -> None:
        """Workers send no messages: nothing waits on shared memory."""

    def multiprocessing_post_run(self) -> None:
        """Nothing to close: no shared memory was made."""


def _with_metadata(arrays: dict[int, np.ndarray], metadata: dict[int, Any]) -> dict[int, Any]:
    from pydidas.core import Dataset

    return {node_id: Dataset(arr, **metadata[node_id]) for node_id, arr in arrays.items()}


def _filename(index: Any) -> str:
    from pydidas.workflow import WorkflowTree

    return str(WorkflowTree().root.plugin.get_filename(index))


def _status(text: str) -> None:
    """Show ``text`` in pydidas's status bar when its GUI runs; log it always."""
    from pydidas_qtcore import PydidasQApplication

    app = PydidasQApplication.instance()
    if app is not None and hasattr(app, "set_status_message"):
        app.set_status_message(text)
    log.warning("%s", text)


_WIRE_HOOKS = (
    "multiprocessing_store_results",
    "received_signal_message",
    "multiprocessing_post_run",
)


def wire_app(app: Any) -> Any:
    """Switch an ``ExecuteWorkflowApp`` (or subclass) to storing results that are data.

    The instance keeps its class, parameters, config and pydidas's
    preparation (``multiprocessing_pre_run``); only its store and the two
    hooks that serve shared memory change, as attributes of this instance.
    So whoever holds ``app`` (a frame, ``ExecuteWorkflowRunner``) and
    connects its ``multiprocessing_store_results`` afterwards gets the new
    one, and a copy of the app (made from its class) is pydidas's own.
    Each call starts a new run's record (metadata stored, failure).
    """
    if not app.__dict__.get("_zmqworkers_wire"):
        for name in _WIRE_HOOKS:
            setattr(app, name, types.MethodType(getattr(_WireStore, name), app))
        app._zmqworkers_wire = True
    app._config["wire"] = {}
    return app


def copy_app(app: Any, clone_mode: bool = False) -> Any:
    """pydidas's copy of ``app``, without the hooks :func:`wire_app` bound to ``app``."""
    new = app.copy(clone_mode=clone_mode)
    for name in (*_WIRE_HOOKS, "_zmqworkers_wire"):
        new.__dict__.pop(name, None)
    return new


def run_failure(app: Any) -> ScanPointFailed | None:
    """The failure that ended ``app``'s last run on zmqworkers, if one did."""
    config = getattr(app, "_config", None) or {}
    failed = (config.get("wire") or {}).get("failed")
    return failed if isinstance(failed, ScanPointFailed) else None


def default_n_workers() -> int:
    """pydidas's ``global/mp_n_workers`` setting, the number its own runner starts."""
    from pydidas.core import PydidasQsettings

    return int(PydidasQsettings().value("global/mp_n_workers", int))


# -- the driver ----------------------------------------------------------------


class WorkflowDriver(AppDriver):
    """``AppRunner``'s driver for a workflow app: one task per scan point, data back.

    ``app`` is the runner's clone (its final state goes out at the end) and
    ``given`` the app handed to the runner, already switched by
    :func:`wire_app`: a failure is recorded in its config too.
    """

    def __init__(self, emit: Emit, options: EngineOptions, app: Any, given: Any) -> None:
        super().__init__(emit, options, app, use_tasks=True)
        self.given = given
        self.points = [int(i) for i in np.asarray(given.multiprocessing_get_tasks()).ravel()]
        self.error: ScanPointFailed | None = None

    def prepare(self) -> None:
        self.error = None
        self.given._config.setdefault("wire", {}).pop("failed", None)
        # The contexts as they are now: a frame may have changed them since
        # the runner was made.
        state = frames.capture_state(run=uuid.uuid4().hex[:12])
        self.set_spec(make_spec("task", frames.process_point, (state,), {}))
        self.add_tasks(self.points)
        self.finalize_tasks()

    def deliver(self, task: Any, ok: bool, value: Any) -> None:
        if ok:
            self._emit("results", task, value)
            return
        self._emit("error", task, value)
        if self.error is not None:
            return  # a point already in flight when the first one failed
        self.error = ScanPointFailed(task, value)
        self.given._config.setdefault("wire", {})["failed"] = self.error
        log.error("the workflow run stops: %s", self.error)
        _status(f"Processing stopped: {self.error}")
        # The points not handed out yet are dropped; the run ends once the
        # points already on workers are back.
        self.reset_task_list()

    def finish(self) -> None:
        self._emit("final_app_state", copy_app(self.app))
        self._emit("post_run_called")
