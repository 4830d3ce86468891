"""``Cluster``: the plain-Python face, a ``concurrent.futures.Executor``."""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
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
    none and serves only daemons that connect to ``address``.
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
        )
        self._futures: dict[int, Future[Any] | _Stream] = {}
        self._lock = threading.Lock()
        self._shutdown = False
        self._engine = Engine(options, self)
        self.address = self._engine.start()

    # -- engine callbacks (engine thread) ------------------------------------

    def on_results(self, results: list[tuple[int, bool, Any]]) -> None:
        pop = self._futures.pop
        streams: dict[_Stream, list[tuple[int, bool, Any]]] = {}
        for item in results:
            owner = pop(item[0], None)
            if owner is None:
                continue
            if isinstance(owner, _Stream):
                got = streams.get(owner)
                if got is None:
                    streams[owner] = [item]
                else:
                    got.append(item)
            elif not owner.cancelled():
                if item[1]:
                    owner.set_result(item[2])
                else:
                    owner.set_exception(item[2])
        # One hand-over per stream per batch, not per result.
        for stream, items in streams.items():
            stream.put(items)

    def on_event(self, name: str, data: Any) -> None:
        if name == "closed":
            err = ClusterShutdown("the cluster shut down before the task was done")
            lost: dict[_Stream, list[tuple[int, bool, Any]]] = {}
            for tid in data:
                owner = self._futures.pop(tid, None)
                if isinstance(owner, _Stream):
                    lost.setdefault(owner, []).append((tid, False, err))
                elif owner is not None and not owner.done():
                    owner.set_exception(err)
            for stream, items in lost.items():
                stream.put(items)

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
        """Like ``Executor.map``: results in order, ``fn`` sent once per worker.

        Arguments are read and submitted at once, as ``Executor.map`` does;
        ``chunksize`` is accepted for compatibility (batching is automatic).
        """
        if len(iterables) == 1:
            spec = self._spec("task", fn, (), None)
            args: Iterable[Any] = iterables[0]
        else:
            spec = self._spec("task", _star, (fn,), None)
            args = zip(*iterables)
        stream = _Stream()
        ids: list[int] = []
        for chunk in _chunks(args, SUBMIT_CHUNK):
            ids.extend(self._submit_stream(spec, chunk, stream))
        return self._ordered(stream, ids, timeout)

    def _ordered(self, stream: _Stream, ids: list[int], timeout: float | None) -> Iterator[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        ready: dict[int, tuple[bool, Any]] = {}
        try:
            for tid in ids:
                while tid not in ready:
                    left = None if deadline is None else deadline - time.monotonic()
                    for rid, ok, value in stream.get(left):
                        ready[rid] = (ok, value)
                ok, value = ready.pop(tid)
                if not ok:
                    raise value
                yield value
        finally:
            self._abandon(ids)

    def imap_unordered(
        self, func: Callable[..., Any], tasks: Iterable[Any], *args: Any, **kwargs: Any
    ) -> Iterator[tuple[Any, Any]]:
        """Yield ``(task, result)`` as results arrive: ``func(task, *args, **kwargs)``.

        ``args`` and ``kwargs`` are sent once per worker, not once per task.
        A raising task raises its ``RemoteError`` here, when it comes up.
        Tasks are read from ``tasks`` lazily, at most ``DEFAULT_WINDOW`` ahead,
        so an endless iterator streams in bounded memory.
        """
        spec = self._spec("task", func, args, kwargs)
        stream = _Stream()
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
                    ids = self._submit_stream(spec, chunk, stream)
                    pending.update(zip(ids, chunk))
                if not pending:
                    return
                for tid, ok, value in stream.get(None):
                    task = pending.pop(tid)
                    if not ok:
                        raise value
                    yield task, value
        finally:
            self._abandon(list(pending))

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
                owner = self._futures.get(tid)
                if isinstance(owner, Future):
                    self._futures.pop(tid, None)
                    owner.cancel()
            # What is left of map/imap calls ends with ClusterShutdown.
            self.on_event("closed", dropped)
        if wait:
            for owner in list(self._futures.values()):
                if isinstance(owner, Future):
                    try:
                        owner.exception()
                    except BaseException:
                        pass  # cancelled
            # Tasks of map/imap calls leave the table as their results arrive.
            while any(isinstance(o, _Stream) for o in list(self._futures.values())):
                time.sleep(0.01)
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

    def _submit_stream(self, spec: Spec, args: list[Any], stream: _Stream) -> list[int]:
        if self._shutdown:
            raise ClusterShutdown("cannot submit to a cluster that was shut down")
        ids = self._engine.new_task_ids(len(args))
        self._futures.update(dict.fromkeys(ids, stream))
        self._engine.submit(spec, list(zip(ids, args)))
        return ids

    def _abandon(self, ids: list[int]) -> None:
        """The caller stopped iterating: queued tasks are dropped, not run."""
        left = [tid for tid in ids if self._futures.pop(tid, None) is not None]
        if left and not self._shutdown:
            try:
                self._engine.cancel_many(left)
            except RuntimeError:
                pass  # closed meanwhile

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


class _Stream:
    """Results for one map or imap call, handed over a batch at a time."""

    __slots__ = ("_q",)

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[list[tuple[int, bool, Any]]] = queue.SimpleQueue()

    def put(self, items: list[tuple[int, bool, Any]]) -> None:
        self._q.put(items)

    def get(self, timeout: float | None) -> list[tuple[int, bool, Any]]:
        if timeout is not None and timeout <= 0:
            raise TimeoutError("map results did not arrive in time")
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("map results did not arrive in time") from None


def _star(args: tuple[Any, ...], fn: Callable[..., Any]) -> Any:
    return fn(*args)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
