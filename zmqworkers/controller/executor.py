"""``Cluster``: the plain-Python face, a ``concurrent.futures.Executor``."""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

from zmqworkers.controller.engine import Engine, EngineOptions, Spec, make_spec
from zmqworkers.errors import ClusterShutdown, ConfigurationError
from zmqworkers.keys import resolve_key

# imap_unordered keeps at most this many tasks submitted ahead of the
# results the caller has taken, so an endless iterator streams in bounded
# memory.
DEFAULT_WINDOW = 100_000
SUBMIT_CHUNK = 4096


class Cluster(Executor):
    """Run functions on local worker processes and on daemons that connect.

    ``n_workers=None`` starts ``os.cpu_count()`` local workers; ``0`` starts
    none and serves only daemons that connect to ``address``; both kinds can
    serve the same cluster. ``bind="tcp://0.0.0.0:5555"`` takes the fixed
    ports 5555 (tasks), 5556 (results) and 5557 (control) for firewalls.
    ``connection_file=PATH`` writes the address and key (mode 0600) for
    ``zmqworkers worker --connection-file PATH``.
    """

    def __init__(
        self,
        n_workers: int | None = None,
        *,
        bind: str = "tcp://127.0.0.1:0",
        key: str | bytes | None = None,
        key_file: str | os.PathLike[str] | None = None,
        prefetch: int = 1,
        insecure: bool = False,
        heartbeat_interval: float = 1.0,
        heartbeat_misses: int = 3,
        max_attempts: int = 3,
        replace_dead_workers: bool = True,
        stop_timeout: float = 10.0,
        connection_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if n_workers is None:
            n_workers = os.cpu_count() or 1
        if not isinstance(n_workers, int) or isinstance(n_workers, bool) or n_workers < 0:
            raise ConfigurationError(f"n_workers must be a whole number >= 0, not {n_workers!r}")
        if not isinstance(prefetch, int) or prefetch < 0:
            raise ConfigurationError(f"prefetch must be a whole number >= 0, not {prefetch!r}")
        explicit = resolve_key(key, key_file)
        options = EngineOptions(
            n_workers=n_workers,
            bind=bind,
            key=explicit or resolve_key(generate=True) or b"",
            key_given=explicit is not None,
            insecure=insecure,
            prefetch=prefetch,
            heartbeat_interval=heartbeat_interval,
            heartbeat_misses=heartbeat_misses,
            max_attempts=max_attempts,
            replace_dead_workers=replace_dead_workers,
            stop_timeout=stop_timeout,
            connection_file=os.fspath(connection_file) if connection_file is not None else None,
        )
        self._futures: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()
        self._shutdown = False
        self._engine = Engine(options, self)
        self.address = self._engine.start()

    # -- engine callbacks (engine thread) ------------------------------------

    def on_results(self, results: list[tuple[int, bool, Any]]) -> None:
        pop = self._futures.pop
        for tid, ok, value in results:
            fut = pop(tid, None)
            if fut is None or fut.cancelled():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def on_event(self, name: str, data: Any) -> None:
        if name == "closed":
            for tid in data:
                fut = self._futures.pop(tid, None)
                if fut is not None and not fut.done():
                    fut.set_exception(ClusterShutdown("the cluster shut down first"))

    # -- Executor API ------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        spec = self._spec("call", fn, (), None)
        return self._submit_many(spec, [(args, kwargs)])[0]

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """Like ``Executor.map``: results in order, ``fn`` sent once per worker."""
        if len(iterables) == 1:
            spec = self._spec("task", fn, (), None)
            args: Iterable[Any] = iterables[0]
        else:
            spec = self._spec("task", _star, (fn,), None)
            args = zip(*iterables)
        futures: list[Future[Any]] = []
        for chunk in _chunks(args, SUBMIT_CHUNK):
            futures.extend(self._submit_many(spec, chunk))
        return _ordered_results(futures, timeout)

    def imap_unordered(
        self, func: Callable[..., Any], tasks: Iterable[Any], *args: Any, **kwargs: Any
    ) -> Iterator[tuple[Any, Any]]:
        """Yield ``(task, result)`` as results arrive: ``func(task, *args, **kwargs)``.

        ``args`` and ``kwargs`` are sent once per worker, not once per task.
        A raising task raises its ``RemoteError`` here, when it comes up.
        Tasks are read from ``tasks`` lazily, at most ``DEFAULT_WINDOW`` ahead.
        """
        spec = self._spec("task", func, args, kwargs)
        done: queue.SimpleQueue[tuple[Any, Future[Any]]] = queue.SimpleQueue()
        it = iter(tasks)
        in_flight = 0
        exhausted = False
        while True:
            while not exhausted and in_flight < DEFAULT_WINDOW:
                chunk = list(itertools.islice(it, min(SUBMIT_CHUNK, DEFAULT_WINDOW - in_flight)))
                if not chunk:
                    exhausted = True
                    break
                futs = self._submit_many(spec, chunk)
                for task, fut in zip(chunk, futs):
                    fut.add_done_callback(_put_done(done, task))
                in_flight += len(chunk)
            if in_flight == 0:
                return
            task, fut = done.get()
            in_flight -= 1
            yield task, fut.result()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
        if cancel_futures:
            # Queued tasks are dropped first, so none of them starts after
            # its future was cancelled.
            dropped = self._engine.call(self._engine.sched.drop_pending)
            for tid in dropped:
                fut = self._futures.pop(tid, None)
                if fut is not None:
                    fut.cancel()
        if wait:
            for fut in list(self._futures.values()):
                try:
                    fut.exception()
                except BaseException:
                    pass
        self._engine.shutdown()

    # -- more --------------------------------------------------------------

    def workers(self) -> list[dict[str, Any]]:
        """Snapshot of the connected workers (host, pid, state, tasks done)."""
        return self._engine.workers()

    def counters(self) -> dict[str, Any]:
        """Tasks queued, running, delivered, failed; drops by reason."""
        return self._engine.counters()

    def wait_for_workers(self, n: int, timeout: float = 30.0) -> None:
        """Block until at least ``n`` workers have joined."""
        import time

        deadline = time.monotonic() + timeout
        while len(self.workers()) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {n} workers joined within {timeout} s")
            time.sleep(0.02)

    def __enter__(self) -> Cluster:
        return self

    # -- internals ---------------------------------------------------------

    def _spec(
        self, convention: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any
    ) -> Spec:
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        return make_spec(convention, fn, args, kwargs)

    def _submit_many(self, spec: Spec, args: list[Any]) -> list[Future[Any]]:
        if self._shutdown:
            raise ClusterShutdown("cannot submit to a cluster that was shut down")
        ids = self._engine.new_task_ids(len(args))
        futures: list[Future[Any]] = []
        for tid in ids:
            fut: Future[Any] = Future()
            self._futures[tid] = fut
            futures.append(fut)
        self._engine.submit(spec, list(zip(ids, args)))
        return futures


def _put_done(
    done: queue.SimpleQueue[tuple[Any, Future[Any]]], task: Any
) -> Callable[[Future[Any]], None]:
    return lambda fut: done.put((task, fut))


def _star(args: tuple[Any, ...], fn: Callable[..., Any]) -> Any:
    return fn(*args)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _ordered_results(futures: list[Future[Any]], timeout: float | None) -> Iterator[Any]:
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    futures.reverse()
    try:
        while futures:
            fut = futures.pop()
            if deadline is None:
                yield fut.result()
            else:
                yield fut.result(max(0.0, deadline - time.monotonic()))
    finally:
        for fut in futures:
            fut.cancel()
