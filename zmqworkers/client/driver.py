"""The seed's controller logic over the engine, without Qt.

::

    caller threads (GUI, scripts)            the driving thread (a QThread)
    add_tasks, suspend, restart, ...
        │ engine commands (thread-safe)      serve():
        ▼                                      events.get() ─▶ bookkeeping ─▶ emit(name, *args)
    ┌──────────── engine thread ────────────┐        ▲
    │ owns every socket; on_results and     │────────┘ events queue
    │ on_event callbacks                    │
    └───────────────────────────────────────┘

The engine's callbacks only put events on a queue; ``serve()`` takes them on
the thread that drives the job and reports through one hook,
``emit(name, *args)``, which the Qt face turns into ``sig_<name>`` signals.
No thread but the engine's touches a socket.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from itertools import repeat
from typing import Any

from zmqworkers.client.apps import app_state
from zmqworkers.client.streams import SUBMIT_CHUNK
from zmqworkers.controller.engine import Engine, Spec, make_spec
from zmqworkers.controller.options import EngineOptions
from zmqworkers.errors import ClusterShutdown, ConfigurationError, EngineClosed

log = logging.getLogger(__name__)

Emit = Callable[..., None]

# A worker holds 1 + prefetch tasks; without app tasks the driver keeps
# about this many "ticks" queued per connected worker.
TICKS_PER_WORKER = 2


class TaskDriver:
    """Tasks, function, progress and run state of one controller.

    Methods are safe to call from any thread; :meth:`serve` runs on the
    thread that drives the job and returns when the job ends.
    """

    def __init__(
        self,
        emit: Emit,
        options: EngineOptions,
        emitter: Callable[[str], Callable[..., None] | None] | None = None,
    ) -> None:
        self._emit = emit
        # ``emitter(name)``: the face's callable that emits ``name`` directly
        # (a bound signal's ``emit``), or None while nothing receives it,
        # asked once per batch on the per-result hot path.
        self._direct = emitter
        self.options = options
        self.address = ""
        self.done = 0
        self.target = 0
        self._lock = threading.RLock()
        self._next_id = 1  # the next task id (taken under the lock)
        self._spec: Spec | None = None
        self._tasks: dict[int, Any] = {}  # not yet delivered, by id
        self._held: list[tuple[Spec, list[tuple[int, Any]]]] = []  # added with no engine
        self._events: queue.SimpleQueue[tuple[str, int, Any]] = queue.SimpleQueue()
        self._engine: Engine | None = None
        # The engine shutting down (readable while it does), then what
        # counters() and workers() tell of the last run once it is closed.
        self._last_engine: Engine | None = None
        self._last_run: tuple[dict[str, Any], list[dict[str, Any]]] = ({}, [])
        self._generation = 0  # of the current engine: late events of an old one are ignored
        self._suspended = False
        self._workers_stopped = False
        self._finalized = False
        self._stop = False
        self._engine_gone = False
        self.served = threading.Event()
        self.served.set()

    # -- caller side --------------------------------------------------------

    @property
    def progress(self) -> float:
        target = self.target
        if target <= 0:
            return -1.0
        return self.done / target

    def change_function(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if not callable(func):
            raise TypeError(f"the function must be callable, not {func!r}")
        spec = make_spec("task", func, args, kwargs)
        with self._lock:
            self.reset_task_list()
            self._spec = spec

    def set_spec(self, spec: Spec) -> None:
        with self._lock:
            self._spec = spec

    def add_tasks(self, tasks: Iterable[Any]) -> None:
        items = list(tasks)
        with self._lock:
            spec = self._spec
            if spec is None:
                raise ConfigurationError(
                    "no function to run the tasks: call change_function(func, ...) "
                    "or pass function= first"
                )
            ids = self._take_ids(len(items))
            # Counted and known in full before the first goes out: a result
            # may come back while the rest are still being handed over, and
            # progress must not reach 1 in between.
            self._tasks.update(zip(ids, items))
            self.target += len(items)
            engine = self._engine
            # In commands of SUBMIT_CHUNK, as Cluster sends them: the engine
            # hands out the first while the next are still being made,
            # rather than taking all of a large call in before any.
            for at in range(0, len(items), SUBMIT_CHUNK):
                batch = list(zip(ids[at : at + SUBMIT_CHUNK], items[at : at + SUBMIT_CHUNK]))
                if engine is None:
                    self._held.append((spec, batch))
                else:
                    engine.submit(spec, batch)

    def _take_ids(self, n: int) -> range:
        # Under the lock.
        first = self._next_id
        self._next_id = first + n
        return range(first, first + n)

    def reset_task_list(self) -> None:
        """Drop every task not yet handed to a worker."""
        with self._lock:
            dropped: list[int] = [tid for _, batch in self._held for tid, _ in batch]
            self._held.clear()
            engine = self._engine
            if engine is not None:
                try:
                    dropped += engine.drop_pending()
                except EngineClosed:
                    pass  # the engine is closing: what it held is dropped anyway
            for tid in dropped:
                if self._tasks.pop(tid, _MISSING) is not _MISSING:
                    self.target -= 1
        self._wake()

    def finalize_tasks(self) -> None:
        self._finalized = True
        self._wake()

    def suspend(self) -> None:
        with self._lock:
            self._suspended = True
            if self._engine is not None:
                self._engine.pause()

    def restart(self) -> None:
        with self._lock:
            self._suspended = False
            if self._engine is not None:
                if self._workers_stopped:
                    self._engine.start_workers(self.options.n_workers)
                self._engine.resume()
            self._workers_stopped = False

    def send_stop_signal(self) -> None:
        """Each worker finishes its current call and leaves; no more dispatch until restart."""
        with self._lock:
            self._suspended = True
            if self._engine is not None:
                self._workers_stopped = True
                self._engine.pause()
                self._engine.stop_workers()

    def stop(self, interrupt: bool = False) -> None:
        """End the job: workers stop, tasks not yet done are dropped.

        ``interrupt``: tasks prefetched by workers are taken back and the
        running ones interrupted (their worker processes replaced), instead
        of each worker finishing its current call.
        """
        with self._lock:
            engine = self._engine
            outstanding = list(self._tasks)
        if interrupt and engine is not None and outstanding:
            try:
                engine.cancel(outstanding, force=True)
            except (EngineClosed, FutureTimeout):
                pass  # closing anyway: what it held is dropped with it
        self._stop = True
        self._wake()

    @property
    def dashboard_url(self) -> str | None:
        """The dashboard's link while a run is on (or the last run's), or None."""
        engine = self._engine or self._last_engine
        return engine.dashboard_url if engine is not None else None

    def workers(
        self, timeout: float = 10.0, include_departed: bool = False
    ) -> list[dict[str, Any]]:
        """Snapshots of the connected workers; ``current_task`` is the caller's task object.

        ``include_departed`` adds the last snapshots of the workers of this
        run (or the last) that left or were lost, first, with ``state``
        ``"left"`` or ``"lost: <how>"``. Raises ``TimeoutError`` if the engine
        does not answer within ``timeout`` s.
        """
        engine = self._engine or self._last_engine
        if engine is None:
            return [dict(d) for d in self._last_run[1]] if include_departed else []
        try:
            snapshots, departed = engine.worker_snapshots(timeout, include_departed)
        except FutureTimeout as exc:
            raise TimeoutError(f"the engine did not answer within {timeout} s") from exc
        for snap in snapshots:
            tid = snap.get("current_task")
            if tid is not None and tid not in self._tasks:
                # The heartbeat is up to an interval old and its task is done:
                # a busy worker has gone on to the first task it holds.
                tid = snap.get("first_in_flight")
            snap["current_task_id"] = tid
            snap["current_task"] = self._tasks.get(tid) if tid is not None else None
        for snap in departed:
            snap["current_task_id"] = None
        return departed + snapshots

    def counters(self, timeout: float = 10.0) -> dict[str, Any]:
        """Tasks queued, running, done and failed; re-dispatches; drops by reason.

        Raises ``TimeoutError`` if the engine does not answer within ``timeout`` s.
        """
        out: dict[str, Any] = {
            "queued": 0,
            "running": 0,
            "done": 0,
            "failed": 0,
            "redispatched": 0,
            "workers_lost": 0,
            "dropped": {},
        }
        engine = self._engine or self._last_engine
        if engine is None:
            counts = dict(self._last_run[0])
        else:
            try:
                counts = engine.counters(timeout)
            except FutureTimeout as exc:
                raise TimeoutError(f"the engine did not answer within {timeout} s") from exc
        out.update(counts)
        out["done"] = counts.get("delivered", 0)
        return out

    def excuse_workers(
        self, prefix: str, timeout: float = 10.0, *, lost: Iterable[str] | None = None
    ) -> int:
        """Workers named ``prefix...`` are ended from outside: their tasks count no attempt."""
        engine = self._engine
        if engine is None:
            return 0
        return engine.excuse_workers(prefix, timeout, lost=lost)

    def _wake(self) -> None:
        self._events.put(("wake", self._generation, None))

    # -- the driving thread -------------------------------------------------

    def start_engine(self) -> str:
        """Bind and start local workers (in the caller's thread, so errors raise there)."""
        with self._lock:
            if self._engine is not None or not self.served.is_set():
                raise RuntimeError("the controller is running already")
            options = dataclasses.replace(self.options)
            self._generation += 1
            engine = Engine(options, _EngineRelay(self._events, self._generation))
            self.address = engine.start()
            self._engine = self._last_engine = engine
            self._stop = False
            self._engine_gone = False
            self._workers_stopped = False
            # A fresh run counts from the tasks waiting for it.
            self.done = 0
            self.target = len(self._tasks)
            if self._suspended:
                engine.pause()
            for spec, batch in self._held:
                engine.submit(spec, batch)
            self._held.clear()
            self.served.clear()
        return self.address

    def serve(self) -> None:
        """Drive the job until it is finalized and done, or stopped."""
        prepared = False
        try:
            self.prepare()
            prepared = True
            while not (self._stop or self._engine_gone or (self._finalized and not self._tasks)):
                self._handle(*self._events.get())
            if self._engine_gone and not self._stop:
                self._fail_outstanding()
            if self._finalized and not self._tasks:
                # This run is over: a later start() is a new run, not finalized.
                self._finalized = False
        except Exception as exc:
            log.exception("the controller failed")
            self._emit("error", None, exc)
        finally:
            with self._lock:
                engine, self._engine = self._engine, None
            try:
                if engine is not None:
                    engine.shutdown()
                    self._keep_last_run(engine)
                self._drain()
                if prepared:
                    self.finish()
            finally:
                self.served.set()
                self._emit("finished")

    def _keep_last_run(self, engine: Engine) -> None:
        # The counts and departures of a closed engine, not the engine: it
        # may still hold every task of a stopped run.
        if engine.running:
            return  # did not close in time: it stays the one to ask
        self._last_run = (engine.counters(), engine.worker_snapshots(include_departed=True)[1])
        self._last_engine = None

    def _drain(self) -> None:
        while True:
            try:
                kind, generation, data = self._events.get_nowait()
            except queue.Empty:
                break
            self._handle(kind, generation, data)
        # What the engine held when it closed will not come back.
        with self._lock:
            held = {tid for _, batch in self._held for tid, _ in batch}
            for tid in [t for t in self._tasks if t not in held]:
                del self._tasks[tid]

    def _handle(self, kind: str, generation: int, data: Any) -> None:
        if generation != self._generation:
            return  # from an engine of an earlier run that closed late
        if kind == "results":
            self.on_results(data)
        elif kind == "event":
            name, info = data
            if name == "closed":
                self._engine_gone = True
            elif name == "message":
                text = info.get("text", "") if isinstance(info, dict) else str(info)
                self._emit("message_from_worker", str(text))
            else:
                self.on_worker_event(name, info)

    def _fail_outstanding(self) -> None:
        # The engine closed on its own (it failed): the tasks it held will
        # not come back, and each gets its error rather than silence.
        log.error("the controller engine closed with %d task(s) outstanding", len(self._tasks))
        with self._lock:
            held = {tid for _, batch in self._held for tid, _ in batch}
            lost = [tid for tid in self._tasks if tid not in held]
        for tid in lost:
            self.on_result(tid, False, ClusterShutdown("the controller engine closed"))

    # -- hooks for subclasses (driving thread) ------------------------------

    def prepare(self) -> None:
        """Called once when the driving thread starts."""

    def finish(self) -> None:
        """Called once after the engine has shut down."""

    def on_results(self, results: list[tuple[int, bool, Any]]) -> None:
        """One batch of results from the engine, each task in turn.

        The hot path of a Qt face: per task one ``sig_results`` (or
        ``sig_error``) and one ``sig_progress``, as the seed's API has them,
        and nothing else. A signal nobody receives (the face's ``emitter``
        says None) is not emitted. ``done`` counts the batch once its last
        signal is out, so ``progress`` reaches 1 only after the last
        ``sig_results``. A subclass that changes :meth:`on_result` or
        :meth:`deliver` gets them called for each result instead.
        """
        cls = type(self)
        if cls.on_result is not TaskDriver.on_result or cls.deliver is not TaskDriver.deliver:
            for tid, ok, value in results:
                self.on_result(tid, ok, value)
            return
        if not results:
            return
        tids, oks, values = zip(*results)
        pending = self._tasks
        with self._lock:  # nothing else adds or drops tasks while the batch is taken
            size = len(pending)
            tasks = list(map(pending.pop, tids, repeat(_MISSING)))
            found = size - len(pending)
        emitter = self._emitter
        on_ok, on_progress = emitter("results"), emitter("progress")
        if found == len(tasks) and all(oks) and on_progress is None:
            # Every task known and none failed (the common case): the emits
            # run in one C-level pass, no Python frame per task.
            if on_ok is not None:
                deque(map(on_ok, tasks, values), maxlen=0)
            self.done += found
            return
        on_error, done = emitter("error"), self.done
        for task, ok, value in zip(tasks, oks, values):
            if task is _MISSING:
                continue  # dropped by reset_task_list while it ran
            emit = on_ok if ok else on_error
            if emit is not None:
                emit(task, value)
            done += 1
            self.done = done
            if on_progress is not None:
                target = self.target
                on_progress(done / target if target > 0 else -1.0)

    def _emitter(self, name: str) -> Callable[..., None] | None:
        """The callable that emits ``name`` (the face's own if it offers one),
        or None when the face says nothing receives it."""
        if self._direct is not None:
            return self._direct(name)
        return functools.partial(self._emit, name)

    def on_result(self, tid: int, ok: bool, value: Any) -> None:
        task = self._tasks.pop(tid, _MISSING)
        if task is _MISSING:
            return  # dropped by reset_task_list while it ran
        self.deliver(task, ok, value)
        self.done += 1
        self._emit("progress", self.progress)

    def deliver(self, task: Any, ok: bool, value: Any) -> None:
        if ok:
            self._emit("results", task, value)
        else:
            self._emit("error", task, value)

    def on_worker_event(self, name: str, info: Any) -> None:
        if name == "worker_lost":
            log.warning("worker %s lost: %s", info.get("id"), info.get("how"))
        if name in ("worker_joined", "worker_left", "worker_lost"):
            try:
                workers = self.workers()
            except TimeoutError:
                log.warning("no worker snapshot after %s: the engine did not answer", name)
                return
            self._emit("workers_changed", workers)


_MISSING: Any = object()


class _EngineRelay:
    """The engine's handler: puts its callbacks, tagged with the run, on the queue.

    Called on the engine thread; it only enqueues, so the engine never waits
    on the driving thread.
    """

    def __init__(self, events: queue.SimpleQueue[tuple[str, int, Any]], generation: int) -> None:
        self.events = events
        self.generation = generation

    def on_results(self, results: list[tuple[int, bool, Any]]) -> None:
        self.events.put(("results", self.generation, results))

    def on_event(self, name: str, data: Any) -> None:
        self.events.put(("event", self.generation, (name, data)))


class AppDriver(TaskDriver):
    """Runs an app: its state to every worker, results into the controller's copy.

    The app is a ``zmqworkers.BaseApp`` or follows pydidas's app protocol
    (see :mod:`zmqworkers.client.apps`).
    """

    def __init__(self, emit: Emit, options: EngineOptions, app: Any, use_tasks: bool) -> None:
        # Forked local workers start with the app's module imported (for a
        # pydidas app, all of pydidas): the fork server imports it once.
        module = type(app).__module__
        if module not in options.preload:
            options = options.replace(preload=(*options.preload, module))
        super().__init__(emit, options)
        self.app = app
        self.use_tasks = use_tasks
        self._ticks: set[int] = set()
        self._connected = 0

    def prepare(self) -> None:
        # Each start has a new engine: no worker and no tick of the last run.
        self._ticks.clear()
        self._connected = 0
        app = self.app
        app.multiprocessing_pre_run()
        params, config, worker_options = app_state(app)
        spec = make_spec(
            "app", type(app), (params, config), {"use_tasks": self.use_tasks, **worker_options}
        )
        self.set_spec(spec)
        if self.use_tasks:
            self.add_tasks(app.multiprocessing_get_tasks())
            self.finalize_tasks()
        else:
            self._top_up_ticks()

    def deliver(self, task: Any, ok: bool, value: Any) -> None:
        if ok:
            try:
                self.app.multiprocessing_store_results(task, value)
            except Exception as exc:
                log.exception("multiprocessing_store_results raised for task %r", task)
                self._emit("error", task, exc)
                return
        super().deliver(task, ok, value)

    def finish(self) -> None:
        try:
            self.app.multiprocessing_post_run()
        except Exception as exc:
            log.exception("multiprocessing_post_run raised")
            self._emit("error", None, exc)
        self._emit("final_app_state", self.app.copy())
        self._emit("post_run_called")

    # -- without tasks: ticks ------------------------------------------------

    def on_result(self, tid: int, ok: bool, value: Any) -> None:
        if tid not in self._ticks:
            super().on_result(tid, ok, value)
            return
        self._ticks.discard(tid)
        if not ok:
            self._emit("error", -1, value)
        elif value is not None:
            index, result = value
            self.deliver(index, True, result)
        self._top_up_ticks()

    def on_worker_event(self, name: str, info: Any) -> None:
        super().on_worker_event(name, info)
        if name == "worker_joined":
            self._connected += 1
        elif name in ("worker_left", "worker_lost"):
            self._connected = max(0, self._connected - 1)
        if not self.use_tasks:
            self._top_up_ticks()

    def _top_up_ticks(self) -> None:
        if self.use_tasks or self._stop:
            return
        with self._lock:
            engine, spec = self._engine, self._spec
            want = TICKS_PER_WORKER * self._connected - len(self._ticks)
            if engine is None or spec is None or want <= 0:
                return
            ids = self._take_ids(want)
            self._ticks.update(ids)
            engine.submit(spec, [(tid, -1) for tid in ids])
