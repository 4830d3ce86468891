"""pydidas workflows on zmqworkers: where they run, and the runner ``install()`` hands out.

:class:`WorkflowAppRunner` is ``zmqworkers.AppRunner`` for an
``ExecuteWorkflowApp`` on the workers a :class:`ClusterSpec` names (local
ones or daemons); :func:`iter_points` is the same path for a plain
``Cluster`` (the ``pydidas-workflow`` command). Either way each scan point's
results come back as data (:mod:`~zmqworkers.pydidas.wire`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from zmqworkers.client.cluster import Cluster
from zmqworkers.pydidas import frames
from zmqworkers.pydidas.wire import (
    ScanPointFailed,
    default_n_workers,
    is_workflow_app,
    store_point,
)
from zmqworkers.qt.app_runner import AppRunner


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


def iter_points(
    cluster: Cluster, state: frames.WorkflowState, indices: Iterable[int]
) -> Iterator[tuple[int, Any]]:
    """``(index, frame)`` for each scan point as its result arrives.

    A point that raised on a worker raises :class:`ScanPointFailed` here.
    """
    for outcome in cluster.imap_outcomes(frames.process_point, indices, state):
        if outcome.error is not None:
            raise ScanPointFailed(outcome.task, outcome.error)
        yield outcome.task, outcome.result


# -- the runner --------------------------------------------------------------


class WorkflowAppRunner(AppRunner):
    """Run an ``ExecuteWorkflowApp`` on zmqworkers' workers, local ones or daemons.

    This is ``zmqworkers.AppRunner`` given a workflow app (results as data,
    :mod:`~zmqworkers.pydidas.wire`), with the workers named by ``where``:
    local ones by default (``n_workers`` of them, pydidas's setting if
    None), daemons with ``ClusterSpec(bind=..., key=...)``. ``error`` holds
    the failed scan point that ended a run early, if any.
    """

    def __init__(
        self,
        app: Any,
        n_workers: int | None = None,
        use_app_tasks: bool = True,
        where: ClusterSpec | None = None,
    ) -> None:
        if not is_workflow_app(app):
            raise TypeError(
                f"WorkflowAppRunner runs pydidas's ExecuteWorkflowApp, not {type(app).__name__}"
            )
        where = where or ClusterSpec()
        options = dict(where.options)
        if where.remote:
            # Daemons bring their own processes; none are started here.
            options.update(bind=where.bind, key=where.key, key_file=where.key_file)
            n_workers = 0
        super().__init__(app, n_workers, use_app_tasks, **options)


def shares_inherited_values(app: Any) -> bool:
    """Whether ``app``'s config holds ``multiprocessing.Value``/``Array`` objects.

    Those reach a child process only as arguments of its start (pydidas's
    own runner), never one that runs already: such an app cannot run on
    zmqworkers' workers.
    """
    from multiprocessing.sharedctypes import SynchronizedBase

    todo = [getattr(app, "_config", None)]
    while todo:
        item = todo.pop()
        if isinstance(item, SynchronizedBase):
            return True
        if isinstance(item, dict):
            todo.extend(item.values())
    return False


def runner_factory(where: ClusterSpec | None, pydidas_runner: Any = None) -> Callable[..., Any]:
    """What ``install()`` puts in place of pydidas's ``AppRunner``.

    Workflow apps get :class:`WorkflowAppRunner`; an app that shares
    ``multiprocessing`` values gets ``pydidas_runner`` (pydidas's own); every
    other app goes to zmqworkers' ``AppRunner`` with the same workers.
    """

    def make_runner(app: Any, n_workers: int | None = None, use_app_tasks: bool = True) -> Any:
        if pydidas_runner is not None and shares_inherited_values(app):
            return pydidas_runner(app, n_workers=n_workers, use_app_tasks=use_app_tasks)
        if n_workers is None and where is not None:
            n_workers = where.n_workers
        if is_workflow_app(app):
            return WorkflowAppRunner(app, n_workers, use_app_tasks, where=where)
        options: dict[str, Any] = {}
        if where is not None and where.remote:
            options = {"bind": where.bind, "key": where.key, "key_file": where.key_file}
            n_workers = 0
        elif n_workers is None:
            n_workers = default_n_workers()
        return AppRunner(app, n_workers, use_app_tasks, **options)

    return make_runner


__all__ = [
    "ClusterSpec",
    "ScanPointFailed",
    "WorkflowAppRunner",
    "iter_points",
    "runner_factory",
    "store_point",
]
