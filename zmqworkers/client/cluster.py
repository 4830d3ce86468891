"""``Cluster``: the plain-Python face, a ``concurrent.futures.Executor``."""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, InvalidStateError
from typing import Any

from zmqworkers.client.callbacks import CallbackThread, ClusterFuture
from zmqworkers.client.readouts import ClusterReadouts
from zmqworkers.client.streams import SUBMIT_CHUNK, Feed, Stream, StreamTable, chunks
from zmqworkers.client.views import (
    Outcome,
    TaskView,
    end_cancelled,
    outcomes,
    pairs,
    take_back_futures,
    task_options,
)
from zmqworkers.controller.engine import Engine, Spec, TaskOptions, make_spec
from zmqworkers.controller.options import EngineOptions, build_options
from zmqworkers.errors import ClusterShutdown, ConfigurationError, EngineClosed

log = logging.getLogger(__name__)

# imap_unordered keeps at most this many tasks submitted ahead of the
# results the caller has taken, so an endless iterator streams in bounded
# memory.
DEFAULT_WINDOW = 100_000


class Cluster(Executor, ClusterReadouts):
    """Run functions on local worker processes and on daemons that connect.

    ``n_workers=None`` starts ``os.cpu_count()`` local workers; ``0`` starts
    none and serves only daemons that connect to ``address``; both kinds can
    serve the same cluster. ``bind="tcp://0.0.0.0:5555"`` takes the fixed
    ports 5555 (tasks), 5556 (results) and 5557 (control) for firewalls.
    ``connection_file=PATH`` writes the address and key (mode 0600) for
    ``zmqworkers worker --connection-file PATH``.
    Security (docs/security.md): ``key``/``key_file`` sign every message;
    ``curve_dir`` (``zmqworkers keygen --curve DIR``) also encrypts and admits
    only workers whose public key is in ``DIR/authorized_workers``; binding a
    non-loopback address needs one of them, or ``insecure=True``. Arrays of
    64 KiB or more are signed by length only on loopback, ipc and CURVE links,
    which nothing can change in transit; ``sign_buffers=True`` hashes them
    too, for a plain relay that carries a loopback port across a network.
    Arrays of 128 KiB or more travel between the controller and its local
    workers through shared memory (``/dev/shm``) rather than the socket;
    ``shared_memory=False`` sends them through the socket (docs/cluster.md).
    Local workers are forked from a fork server that has imported
    zmqworkers and ``preload`` (module names) once (``start_method=
    "forkserver"``, the default on Linux), or start as new interpreters
    (``"spawn"``); see docs/cluster.md.
    ``dashboard="127.0.0.1:8787"`` serves a read-only web page, JSON and
    Prometheus metrics (port 0 picks a free port; ``dashboard_url`` is the
    link); ``forward_logs="WARNING"`` brings the log records tasks emit on
    workers to the ``zmqworkers.remote`` logger here (docs/monitoring.md).
    Control (docs/cluster.md): ``future.cancel()`` takes back a task not yet
    started, ``cancel(futures, force=True)`` interrupts running ones;
    ``task_timeout`` seconds, and per call :meth:`with_options` (timeout,
    priority, max_attempts); local workers are recycled after
    ``max_tasks_per_worker`` tasks or over ``max_worker_memory`` (``"2GiB"``).
    """

    def __init__(
        self,
        n_workers: int | None = None,
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
        max_message_size: int | None = EngineOptions.max_message_size,
        connection_file: str | os.PathLike[str] | None = None,
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
        if n_workers is None:
            n_workers = os.cpu_count() or 1
        if not isinstance(n_workers, int) or isinstance(n_workers, bool) or n_workers < 0:
            raise ConfigurationError(f"n_workers must be a whole number >= 0, not {n_workers!r}")
        options = build_options(
            key=key,
            key_file=key_file,
            prefetch=prefetch,
            curve_dir=curve_dir,
            connection_file=connection_file,
            max_message_size=max_message_size,
            n_workers=n_workers,
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
        self._futures: dict[int, Future[Any]] = {}
        # Done-callbacks are user code: never on the engine thread.
        self._callbacks = CallbackThread()
        self._streams = StreamTable()
        self._lock = threading.Lock()
        self._shutdown = False
        # Counts result batches, so a shutdown can tell work that goes on
        # from work that hangs.
        self._progress = threading.Condition()
        self._batches = 0
        self._stop_timeout = options.stop_timeout
        self._task_timeout = options.task_timeout
        self._shutdown_why = "the cluster shut down before the task was done"
        self._engine = Engine(options, self)
        self.address = self._engine.start()

    # -- engine callbacks (engine thread) ------------------------------------

    def on_results(self, results: list[tuple[int, bool, Any]]) -> None:
        futures = self._futures
        if not futures:  # all of a map or imap: none has a future
            self._streams.deliver(results)
            self._made_progress()
            return
        rest: list[tuple[int, bool, Any]] = []
        self._callbacks.completing(True)
        try:
            for item in results:
                fut = futures.pop(item[0], None)
                if fut is None:
                    rest.append(item)
                else:
                    try:
                        if item[1]:
                            fut.set_result(item[2])
                        else:
                            fut.set_exception(item[2])
                    except InvalidStateError:
                        pass  # cancelled by its owner meanwhile: the rest still get theirs
        finally:
            self._callbacks.completing(False)
        if rest:
            self._streams.deliver(rest)
        self._made_progress()

    def on_event(self, name: str, data: Any) -> None:
        if name == "closed":
            self._cut_short(data, on_engine=True)
        elif name == "cancelled":
            end_cancelled(self._futures, self._callbacks, data)
            self._made_progress()

    def _cut_short(self, task_ids: list[int], on_engine: bool) -> None:
        """These tasks end with ClusterShutdown: their futures and their streams.

        On the engine thread (as it closes) done-callbacks are queued; in
        the caller's thread (``shutdown(cancel_futures=True)``) they run
        there, as ``cancel()`` runs them.
        """
        err = ClusterShutdown(self._shutdown_why)
        rest = []
        self._callbacks.completing(on_engine)
        try:
            for tid in task_ids:
                fut = self._futures.pop(tid, None)
                if fut is None:
                    rest.append((tid, False, err))
                elif not fut.done():
                    fut.set_exception(err)
        finally:
            self._callbacks.completing(False)
        self._streams.deliver(rest)
        self._made_progress()

    # -- Executor API ------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self._submit_with(None, fn, args, kwargs)

    def _submit_with(
        self, opts: TaskOptions | None, fn: Callable[..., Any], args: Any, kwargs: Any
    ) -> Future[Any]:
        spec = self._spec("call", fn, (), None)
        return self._submit_many(spec, [(args, kwargs)], opts)[0]

    def with_options(
        self,
        *,
        timeout: float | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
    ) -> TaskView:
        """A view whose ``submit``, ``map`` and ``imap_unordered`` give their tasks these options.

        ``timeout``: seconds a task may run before its worker process is
        replaced and it fails with ``TaskTimeout`` (default: ``task_timeout``).
        ``priority``: queued tasks of a higher priority go out first, in
        order within one level. ``max_attempts``: workers that may die
        running a task before it fails with ``WorkerLost``.
        """
        return TaskView(self, task_options(timeout, priority, max_attempts, self._task_timeout))

    def cancel(self, futures: Iterable[Future[Any]], force: bool = False) -> int:
        """Cancel tasks by their futures; return how many were cancelled.

        Queued and prefetched tasks are taken back and never run. With
        ``force=True`` running ones are interrupted: their worker process is
        replaced (a local one killed with its process group, a daemon's by
        its supervisor), and the tasks it had prefetched go back to the
        queue. Cancelled futures raise ``CancelledError``.
        """
        return take_back_futures(self._engine, futures, force)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """Like ``Executor.map``: results in order, ``fn`` sent once per worker.

        Arguments are read and submitted at once, as ``Executor.map`` does;
        ``chunksize`` is accepted for compatibility (batching is automatic).
        ``buffersize=N`` (as in Python 3.14) keeps at most N tasks submitted
        and not yet yielded: N are read at once, then more as results are
        taken, so an endless iterable streams in bounded memory.
        """
        return self._map(None, fn, iterables, timeout, buffersize)

    def _map(
        self,
        opts: TaskOptions | None,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        buffersize: int | None,
    ) -> Iterator[Any]:
        _check_buffersize(buffersize)
        if len(iterables) == 1:
            spec = self._spec("task", fn, (), None)
            args: Iterator[Any] = iter(iterables[0])
        else:
            spec = self._spec("task", _star, (fn,), None)
            args = zip(*iterables)
        stream = self._streams.new()
        ranges: collections.deque[range] = collections.deque()
        if buffersize is None:
            for chunk in chunks(args, SUBMIT_CHUNK):
                ranges.append(self._submit_stream(spec, chunk, stream, opts))
            return self._ordered(stream, ranges, timeout, None)
        feed = Feed(args, buffersize, lambda chunk: self._submit_stream(spec, chunk, stream, opts))
        ranges.extend(feed.top_up(0))
        return self._ordered(stream, ranges, timeout, feed)

    def _ordered(
        self,
        stream: Stream,
        ranges: collections.deque[range],
        timeout: float | None,
        feed: Feed | None,
    ) -> Iterator[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        ready: dict[int, tuple[bool, Any]] = {}
        yielded = 0
        try:
            while ranges:
                for tid in ranges.popleft():
                    if feed is not None:
                        ranges.extend(feed.top_up(yielded))
                    while tid not in ready:
                        left = None if deadline is None else deadline - time.monotonic()
                        for rid, ok, value in stream.get(left):
                            ready[rid] = (ok, value)
                    ok, value = ready.pop(tid)
                    if not ok:
                        raise value
                    yielded += 1
                    yield value
        finally:
            self._abandon(stream)

    def imap_unordered(
        self, func: Callable[..., Any], tasks: Iterable[Any], *args: Any, **kwargs: Any
    ) -> Iterator[tuple[Any, Any]]:
        """Yield ``(task, result)`` as results arrive: ``func(task, *args, **kwargs)``.

        ``args`` and ``kwargs`` are sent once per worker, not once per task.
        A raising task raises its ``RemoteError`` here, when it comes up.
        Tasks are read from ``tasks`` lazily, at most ``DEFAULT_WINDOW`` ahead,
        so an endless iterator streams in bounded memory.
        """
        return pairs(self._imap(None, func, tasks, args, kwargs))

    def imap_outcomes(
        self, func: Callable[..., Any], tasks: Iterable[Any], *args: Any, **kwargs: Any
    ) -> Iterator[Outcome]:
        """Like :meth:`imap_unordered`, but a failed task is yielded, not raised.

        Yields an :class:`Outcome` per task as it completes; the run goes on
        past failures (what ``zmqworkers run`` uses).
        """
        return outcomes(self._imap(None, func, tasks, args, kwargs))

    def _imap(
        self,
        opts: TaskOptions | None,
        func: Callable[..., Any],
        tasks: Iterable[Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Iterator[list[tuple[Any, bool, Any]]]:
        """Batches of ``(task, ok, value)`` as they arrive: a step per batch, not per task."""
        spec = self._spec("task", func, args, kwargs)
        stream = self._streams.new()
        pending: dict[int, Any] = {}
        it = iter(tasks)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < DEFAULT_WINDOW:
                    room = min(SUBMIT_CHUNK, DEFAULT_WINDOW - len(pending))
                    chunk = list(itertools.islice(it, room))
                    if not chunk:
                        exhausted = True
                        break
                    ids = self._submit_stream(spec, chunk, stream, opts)
                    pending.update(zip(ids, chunk))
                if not pending:
                    return
                pop = pending.pop
                yield [(pop(tid), ok, value) for tid, ok, value in stream.get(None)]
        finally:
            self._abandon(stream)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
        if cancel_futures:
            # Queued tasks are dropped first, so none of them starts after
            # its future was cancelled.
            dropped = self._engine.drop_pending()
            for tid in dropped:
                fut = self._futures.pop(tid, None)
                if fut is not None:
                    Future.cancel(fut)  # taken back already
            # Prefetched ones are taken back from their workers too.
            take_back_futures(self._engine, list(self._futures.values()))
            # What is left of map/imap calls ends with ClusterShutdown.
            self._cut_short(dropped, on_engine=False)
        if wait:
            try:
                finished = self._wait_for_work()
            except BaseException:
                # Ctrl-C while waiting: stop at once, then let it through.
                self._stop_now("the cluster was interrupted while shutting down")
                raise
            if not finished:
                self._stop_now(
                    f"shutdown waited stop_timeout={self._stop_timeout:g} s without a "
                    "result, then stopped the workers before this task was done"
                )
                return
        self._engine.shutdown()
        # The callbacks of the last futures have run when a waiting
        # shutdown returns, as with ThreadPoolExecutor; one that hangs holds
        # it no longer than a hung task would.
        if not self._callbacks.close(self._stop_timeout if wait else None) and wait:
            log.warning(
                "a done-callback still runs after stop_timeout=%g s; shutdown goes on",
                self._stop_timeout,
            )

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C in the block means stop now, not wait for every task.
            with self._lock:
                self._shutdown = True
            self._stop_now("the cluster was interrupted (KeyboardInterrupt)")
            return
        self.shutdown(wait=True)

    def _stop_now(self, why: str) -> None:
        """Queued tasks dropped, workers stopped without a grace period."""
        self._shutdown_why = why
        self._engine.shutdown(grace=0.0)
        self._callbacks.close(None)

    def _made_progress(self) -> None:
        with self._progress:
            self._batches += 1
            self._progress.notify_all()

    def _wait_for_work(self) -> bool:
        """Wait for the tasks left while results keep coming.

        False when ``stop_timeout`` passed without any result: a task that
        never returns must not hold the caller for ever.
        """
        pending = [f for f in list(self._futures.values()) if not f.done()]
        i = 0
        seen = self._batches
        deadline = time.monotonic() + self._stop_timeout
        while True:
            while i < len(pending) and pending[i].done():
                i += 1
            if i == len(pending) and self._streams.idle():
                return True
            with self._progress:
                if self._batches == seen:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    # Bounded: a future its owner cancels ends without a batch.
                    self._progress.wait(min(left, 1.0))
                if self._batches != seen:
                    seen = self._batches
                    deadline = time.monotonic() + self._stop_timeout

    # -- more --------------------------------------------------------------

    def __enter__(self) -> Cluster:
        return self

    # -- internals ---------------------------------------------------------

    def _spec(
        self, convention: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any
    ) -> Spec:
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        return make_spec(convention, fn, args, kwargs)

    def _submit_stream(
        self, spec: Spec, args: list[Any], stream: Stream, opts: TaskOptions | None = None
    ) -> range:
        if self._shutdown:
            raise ClusterShutdown("cannot submit to a cluster that was shut down")
        ids = self._engine.new_task_ids(len(args))
        self._streams.add(ids, stream)
        self._engine.submit(spec, list(zip(ids, args)), opts)
        return ids

    def _abandon(self, stream: Stream) -> None:
        """The caller stopped iterating: queued tasks are dropped, not run."""
        left = self._streams.remove(stream)
        if left and not self._shutdown:
            try:
                self._engine.cancel_many(left)
            except EngineClosed:
                pass  # closed meanwhile

    def _submit_many(
        self, spec: Spec, args: list[Any], opts: TaskOptions | None = None
    ) -> list[Future[Any]]:
        if self._shutdown:
            raise ClusterShutdown("cannot submit to a cluster that was shut down")
        ids = self._engine.new_task_ids(len(args))
        futures: list[Future[Any]] = []
        callbacks = self._callbacks
        for tid in ids:
            take_back = functools.partial(take_back_futures, self._engine, tid=tid)
            fut = ClusterFuture(callbacks, take_back, tid)
            self._futures[tid] = fut
            futures.append(fut)
        self._engine.submit(spec, list(zip(ids, args)), opts)
        return futures


def _check_buffersize(buffersize: Any) -> None:
    if buffersize is None:
        return
    if not isinstance(buffersize, int) or isinstance(buffersize, bool):
        raise TypeError(f"buffersize must be a whole number or None, not {buffersize!r}")
    if buffersize < 1:
        raise ValueError(f"buffersize must be 1 or more (or None for no bound), not {buffersize}")


def _star(args: tuple[Any, ...], fn: Callable[..., Any]) -> Any:
    return fn(*args)
