"""``Cluster.with_options(...)``: a view whose calls give their tasks options.

The view takes none of the user function's keyword names: options are
fixed when the view is made, and ``submit(fn, *args, **kwargs)`` passes
every keyword to ``fn``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, NamedTuple, Protocol

from zmqworkers.client.callbacks import CallbackThread, ClusterFuture
from zmqworkers.controller.engine import Engine, TaskOptions
from zmqworkers.controller.options import check_count, check_timeout
from zmqworkers.errors import ConfigurationError, EngineClosed

# How long a cancel waits for the engine's answer (its futures end anyway).
CANCEL_WAIT = 10.0


class Outcome(NamedTuple):
    """One finished task: ``error`` is None when it succeeded."""

    task: Any
    result: Any
    error: BaseException | None


class Calls(Protocol):
    """What a view calls on its cluster: the calls with options."""

    def _submit_with(
        self, opts: TaskOptions | None, fn: Callable[..., Any], args: Any, kwargs: Any
    ) -> Future[Any]: ...

    def _map(
        self,
        opts: TaskOptions | None,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        buffersize: int | None,
    ) -> Iterator[Any]: ...

    def _imap(
        self,
        opts: TaskOptions | None,
        func: Callable[..., Any],
        tasks: Iterable[Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Iterator[list[tuple[Any, bool, Any]]]: ...


def pairs(batches: Iterator[list[tuple[Any, bool, Any]]]) -> Iterator[tuple[Any, Any]]:
    """``(task, result)`` per task of ``(task, ok, value)`` batches; a failure raises."""
    for batch in batches:
        for task, ok, value in batch:
            if not ok:
                raise value
            yield task, value


def outcomes(batches: Iterator[list[tuple[Any, bool, Any]]]) -> Iterator[Outcome]:
    """An :class:`Outcome` per task of ``(task, ok, value)`` batches."""
    for batch in batches:
        for task, ok, value in batch:
            yield Outcome(task, value, None) if ok else Outcome(task, None, value)


def task_options(
    timeout: float | None, priority: int, max_attempts: int | None, default_timeout: float | None
) -> TaskOptions:
    """Checked options for a call's tasks; ``timeout`` None takes the cluster's."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ConfigurationError(f"priority must be a whole number, not {priority!r}")
    timeout = check_timeout(timeout, "timeout")
    return TaskOptions(
        priority=priority,
        timeout=default_timeout if timeout is None else timeout,
        max_attempts=check_count(max_attempts, "max_attempts"),
    )


class TaskView:
    """``submit``, ``map``, ``imap_unordered`` and ``imap_outcomes`` of a cluster, with options."""

    def __init__(self, cluster: Calls, opts: TaskOptions) -> None:
        self._cluster = cluster
        self.options = opts

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self._cluster._submit_with(self.options, fn, args, kwargs)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """As ``Cluster.map``; ``timeout`` here bounds the whole iteration, as there."""
        return self._cluster._map(self.options, fn, iterables, timeout, buffersize)

    def imap_unordered(
        self, func: Callable[..., Any], tasks: Iterable[Any], *args: Any, **kwargs: Any
    ) -> Iterator[tuple[Any, Any]]:
        return pairs(self._cluster._imap(self.options, func, tasks, args, kwargs))

    def imap_outcomes(
        self, func: Callable[..., Any], tasks: Iterable[Any], *args: Any, **kwargs: Any
    ) -> Iterator[Outcome]:
        return outcomes(self._cluster._imap(self.options, func, tasks, args, kwargs))


def take_back_futures(
    engine: Engine,
    futures: Iterable[Future[Any]] = (),
    force: bool = False,
    tid: int | None = None,
) -> int:
    """Ask the engine to take back the tasks of ``futures`` (or task ``tid``).

    The engine ends the futures of the tasks it took back itself (the
    cluster's ``cancelled`` event), also when this call stops waiting for
    its answer after ``CANCEL_WAIT`` seconds and returns 0: the command
    still runs. Returns how many were taken back.
    """
    if tid is not None:
        ids = [tid]
    else:
        ids = [
            f.task_id
            for f in futures
            if isinstance(f, ClusterFuture) and f.task_id is not None and not f.done()
        ]
    if not ids:
        return 0
    try:
        taken = engine.cancel(ids, force, timeout=CANCEL_WAIT)
    except (EngineClosed, TimeoutError):
        return 0
    return sum(taken)


def end_cancelled(
    futures: dict[int, Future[Any]], callbacks: CallbackThread, task_ids: list[int]
) -> None:
    """The engine took these tasks back: their futures end cancelled (engine thread).

    Here, not in whoever asked: a cancel whose caller stopped waiting for
    the engine's answer still ends its futures.
    """
    callbacks.completing(True)
    try:
        for tid in task_ids:
            fut = futures.pop(tid, None)
            if fut is not None:
                Future.cancel(fut)  # taken back already: not asked again
    finally:
        callbacks.completing(False)
