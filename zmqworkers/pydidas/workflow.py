"""pydidas workflows on zmqworkers: results travel as data, not through shared memory.

pydidas's ``ExecuteWorkflowApp`` has its workers write each scan point's
node results into ``SharedMemory`` slots and sends the controller only the
slot's number; the store then reads the slot and frees it. That cannot reach
another host, and it also goes wrong on one: pydidas's
``ExecuteWorkflowRunner`` connects the store a second time, so the second
store reads a slot a worker has already refilled with a later point.

Here each result is the point's data itself (:func:`frames.process_point`),
and storing it is idempotent: storing it twice writes the same numbers
twice. :class:`WorkflowAppRunner` runs that on zmqworkers' workers with the
signals and methods pydidas's frames and ``ExecuteWorkflowRunner`` use.
"""

from __future__ import annotations

import logging
import threading
import types
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
from qtpy import QtCore

from zmqworkers.client.cluster import Cluster
from zmqworkers.pydidas import frames

log = logging.getLogger(__name__)


class ClusterSpec:
    """Where a workflow runs: ``n`` local workers, or daemons at ``bind`` with a key."""

    def __init__(
        self,
        n_workers: int | None = None,
        *,
        bind: str | None = None,
        key: str | bytes | None = None,
        key_file: str | None = None,
        **options: Any,
    ) -> None:
        if bind is not None and key is None and key_file is None:
            raise ValueError(f"daemons at {bind} need a key: give key= or key_file=")
        self.n_workers = n_workers
        self.bind = bind
        self.key = key
        self.key_file = key_file
        self.options = options

    @property
    def remote(self) -> bool:
        return self.bind is not None

    def start(self, n_workers: int) -> Cluster:
        if self.bind is None:
            return Cluster(n_workers, **self.options)
        # Daemons bring their own processes; none are started here.
        return Cluster(0, bind=self.bind, key=self.key, key_file=self.key_file, **self.options)


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
    results.store_results(int(index), arrays)
    return True


def _default_metadata(arrays: dict[int, np.ndarray]) -> dict[int, dict[str, Any]]:
    from pydidas.core.utils.dataset_utils import get_default_property_dict

    return {node_id: get_default_property_dict(arr.shape) for node_id, arr in arrays.items()}


def iter_points(
    cluster: Cluster, state: frames.WorkflowState, indices: Iterable[int]
) -> Iterator[tuple[int, Any]]:
    """``(index, frame)`` for each scan point as its result arrives."""
    for outcome in cluster.imap_outcomes(frames.process_point, indices, state):
        if outcome.error is not None:
            raise outcome.error
        yield outcome.task, outcome.result


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
            _report_unreadable(index)
            return
        if self.get_param_value("autosave_results"):  # type: ignore[attr-defined]
            arrays = frame[0]
            if not self._config.get("export_files_prepared"):
                WorkflowResults().prepare_files_for_saving(
                    self.get_param_value("autosave_directory"),  # type: ignore[attr-defined]
                    self.get_param_value("autosave_format"),  # type: ignore[attr-defined]
                )
                self._config["export_files_prepared"] = True
            ProcessingResultIoMeta.export_frame_to_active_savers(int(index), arrays)
        self.sig_results_updated.emit()  # type: ignore[attr-defined]

    def received_signal_message(self, message: str) -> None:
        """Workers send no messages: nothing waits on shared memory."""

    def multiprocessing_post_run(self) -> None:
        """Nothing to close: no shared memory was made."""


def _report_unreadable(index: Any) -> None:
    from pydidas.workflow import WorkflowTree
    from pydidas_qtcore import PydidasQApplication

    name = WorkflowTree().root.plugin.get_filename(index)
    app = PydidasQApplication.instance()
    text = f"File reading error during processing of scan index #{index}. (filename: {name})"
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
    """
    if app.__dict__.get("_zmqworkers_wire"):
        return app
    for name in _WIRE_HOOKS:
        setattr(app, name, types.MethodType(getattr(_WireStore, name), app))
    app._zmqworkers_wire = True
    return app


def copy_app(app: Any, clone_mode: bool = False) -> Any:
    """pydidas's copy of ``app``, without the hooks :func:`wire_app` bound to ``app``."""
    new = app.copy(clone_mode=clone_mode)
    for name in (*_WIRE_HOOKS, "_zmqworkers_wire"):
        new.__dict__.pop(name, None)
    return new


def is_workflow_app(app: Any) -> bool:
    from pydidas.apps import ExecuteWorkflowApp

    return isinstance(app, ExecuteWorkflowApp)


# -- the runner --------------------------------------------------------------


def _default_n_workers() -> int:
    from pydidas.core import PydidasQsettings

    return int(PydidasQsettings().value("global/mp_n_workers", int))


class WorkflowAppRunner(QtCore.QThread):
    """Run an ``ExecuteWorkflowApp`` on zmqworkers' workers, in pydidas's ``AppRunner`` shape.

    Like pydidas's runner it prepares ``app`` unless ``run_prepared`` is set,
    connects ``sig_results`` to the app's store and ``sig_post_run_called``
    to its ``multiprocessing_post_run``, and emits ``sig_final_app_state``
    and then ``finished`` at the end. Each ``sig_results`` carries
    ``(index, (arrays, metadata))``; ``app`` is switched with
    :func:`wire_app` so its store takes that.

    ``where`` says which workers: local ones by default (``n_workers`` of
    them, pydidas's setting if None), daemons with ``ClusterSpec(bind=...,
    key=...)``. ``error`` holds what ended a run early, if anything.
    """

    sig_progress = QtCore.Signal(float)
    sig_results = QtCore.Signal(object, object)
    sig_message_from_worker = QtCore.Signal(str)
    sig_final_app_state = QtCore.Signal(object)
    sig_post_run_called = QtCore.Signal()

    def __init__(
        self,
        app: Any,
        n_workers: int | None = None,
        use_app_tasks: bool = True,
        where: ClusterSpec | None = None,
    ) -> None:
        super().__init__()
        if not use_app_tasks:
            raise ValueError("a workflow runs its scan points as tasks: use_app_tasks must be True")
        self.n_workers = _default_n_workers() if n_workers is None else n_workers
        self._where = where or ClusterSpec()
        wire_app(app)
        # A frame runs the same app again: each run stores its metadata anew.
        app._config["wire"] = {}
        if not app._config["run_prepared"]:
            app.multiprocessing_pre_run()
        self.sig_results.connect(app.multiprocessing_store_results)
        self.sig_post_run_called.connect(app.multiprocessing_post_run)
        self._app = copy_app(app, clone_mode=True)
        self._tasks = [int(i) for i in np.asarray(app.multiprocessing_get_tasks()).ravel()]
        self._done = 0
        self._cluster: Cluster | None = None
        self._lock = threading.Lock()
        self._interrupted = False
        self.error: BaseException | None = None

    @property
    def n_workers(self) -> int:
        return self._n_workers

    @n_workers.setter
    def n_workers(self, number: int) -> None:
        if not isinstance(number, int) or isinstance(number, bool):
            raise ValueError("The number of workers must be an integer number.")
        if number < 0:
            raise ValueError(f"The number of workers must be 0 or more, not {number}.")
        self._n_workers = number

    @property
    def progress(self) -> float:
        if not self._tasks:
            return -1.0
        return self._done / len(self._tasks)

    def get_app(self) -> Any:
        return copy_app(self._app)

    def run(self) -> None:
        state = frames.capture_state(run=uuid.uuid4().hex[:12])
        try:
            with self._lock:
                if self._interrupted:
                    return
                self._cluster = self._where.start(self.n_workers)
            total = len(self._tasks)
            for index, frame in iter_points(self._cluster, state, self._tasks):
                if self._interrupted:
                    break
                self._done += 1
                self.sig_results.emit(index, frame)
                self.sig_progress.emit(self._done / total)
        except BaseException as exc:
            if not self._interrupted:
                self.error = exc
                log.error("the workflow run ended early: %s: %s", type(exc).__name__, exc)
        finally:
            self._close_cluster(cancel=self._interrupted)
            self.sig_final_app_state.emit(copy_app(self._app))
            self.sig_post_run_called.emit()

    def _close_cluster(self, cancel: bool) -> None:
        with self._lock:
            cluster, self._cluster = self._cluster, None
        if cluster is not None:
            cluster.shutdown(wait=not cancel, cancel_futures=cancel)

    def requestInterruption(self) -> None:
        """Abort: queued points are dropped, workers stop, ``finished`` still comes."""
        with self._lock:
            self._interrupted = True
            cluster = self._cluster
        super().requestInterruption()
        if cluster is not None:
            # Ends the result stream the run thread waits on.
            cluster.shutdown(wait=False, cancel_futures=True)

    def send_stop_signal(self) -> None:
        self.requestInterruption()

    def stop(self) -> None:
        self.requestInterruption()

    def wait_for_processes_to_finish(self, timeout: float = 2) -> None:
        self.wait(int(max(0.0, timeout) * 1000))

    def exit(self, code: int = 0) -> None:
        if self.isRunning():
            self.requestInterruption()
        super().exit(code)


def runner_factory(where: ClusterSpec | None) -> Callable[..., Any]:
    """What ``install()`` puts in place of pydidas's ``AppRunner``.

    Workflow apps get :class:`WorkflowAppRunner`; every other app goes to
    zmqworkers' ``AppRunner`` with the same workers.
    """

    def make_runner(app: Any, n_workers: int | None = None, use_app_tasks: bool = True) -> Any:
        if n_workers is None and where is not None:
            n_workers = where.n_workers
        if is_workflow_app(app):
            return WorkflowAppRunner(app, n_workers, use_app_tasks, where=where)
        from zmqworkers.qt import AppRunner

        options: dict[str, Any] = {}
        if where is not None and where.remote:
            options = {"bind": where.bind, "key": where.key, "key_file": where.key_file}
            n_workers = 0
        elif n_workers is None:
            n_workers = _default_n_workers()
        return AppRunner(app, n_workers, use_app_tasks, **options)

    return make_runner
