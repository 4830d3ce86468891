"""Where every task is: queued, on a worker, or delivered. Pure code.

No sockets, threads or clocks: the engine calls these methods with what
arrived and the time it read, and sends what they return. Tests drive them
with any schedule of arrivals, deaths and duplicates they like.

Invariants:

- a task id is in exactly one of ``pending`` or some worker's ``in_flight``,
  until it is delivered, after which it is in neither;
- :meth:`Scheduler.complete` reports a task as delivered at most once;
- a worker never holds more than ``capacity`` undelivered tasks;
- queued tasks go out by ``priority``, highest first, in order within a level;
- a cancelled task is forgotten at once and never assigned again.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from zmqworkers.controller.pending import PendingQueue
from zmqworkers.errors import RESULT_NEVER_ARRIVED, WorkerLost

MAX_DEPARTED = 100


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """What one call asked for its tasks; shared by every task of the call."""

    priority: int = 0
    timeout: float | None = None  # seconds running; None: no limit
    max_attempts: int | None = None  # None: the scheduler's


@dataclass(slots=True)
class TaskRecord:
    spec_id: str
    arg: Any
    worker: str | None = None  # None: queued
    # None for the defaults: one pointer per task, the value shared by a call.
    opts: TaskOptions | None = None
    attempts: int = 0
    # None until a worker dies holding it: an empty list per queued task
    # would cost 56 bytes each, a million times over.
    deaths: list[tuple[str, str]] | None = None

    @property
    def suspect(self) -> bool:
        """Held by a worker that died: runs alone from now on (see assign)."""
        return self.deaths is not None


@dataclass
class WorkerState:
    """What the controller knows of one connected worker."""

    id: str
    host: str = ""
    pid: int = 0
    capacity: int = 2  # 1 + prefetch, in dispatch units
    # Tasks per dispatch unit: 1 unless tasks are measured to be tiny, when
    # several share a unit (see Engine._tune_batch).
    batch: int = 1
    local: bool = False
    # Ordered: the first runs. The value is the number of the TASKS message
    # that carried the task (None until it is sent), for reconcile.
    in_flight: dict[int, int | None] = field(default_factory=dict)
    specs: set[str] = field(default_factory=set)
    done: int = 0
    state: str = "idle"
    current: int | None = None
    last_seen: float = 0.0
    joined: float = 0.0
    draining: bool = False
    # False when array buffers are signed by length only (a protected link).
    buffers_signed: bool = True
    session: str = ""  # the tag of its session (what an INTERRUPT names)
    # From its heartbeats: resident memory (bytes), CPU (% of one core).
    rss: int | None = None
    cpu: float | None = None

    @property
    def free(self) -> int:
        if self.draining:
            return 0
        return self.capacity * self.batch - len(self.in_flight)

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "local": self.local,
            "state": "draining" if self.draining else self.state,
            "current_task": self.current,
            # What it runs once the heartbeat's task is done: the first it holds.
            "first_in_flight": next(iter(self.in_flight), None),
            "in_flight": len(self.in_flight),
            "tasks_done": self.done,
            "buffers_signed": self.buffers_signed,
            "rss": self.rss,
            "cpu": self.cpu,
            "last_heartbeat": self.last_seen,
        }


def _priority(rec: TaskRecord) -> int:
    return 0 if rec.opts is None else rec.opts.priority


class Scheduler:
    """Demand-driven dispatch with exactly-once delivery and bounded retries.

    ``pending`` may hold stale ids (tasks delivered or cancelled while
    queued): removing them from the middle of a deque costs O(n) per result,
    so :meth:`assign` skips them instead. ``queued`` is the true count.
    """

    def __init__(self, max_attempts: int = 3) -> None:
        self.max_attempts = max_attempts
        self.tasks: dict[int, TaskRecord] = {}
        self.pending = PendingQueue()
        self.queued = 0
        self.workers: dict[str, WorkerState] = {}
        self.spec_refs: collections.Counter[str] = collections.Counter()
        # Tasks queued again after a worker held them, lost, or left without
        # handing them back or sending their result (not those it handed
        # back, nor those prefetched behind an interrupted call).
        self.redispatched = 0
        self.paused = False
        # Last snapshots of workers that left or were lost, newest last;
        # bounded, as daemons may come and go for as long as a controller runs.
        self.departed: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        # Worker id prefixes whose loss is not their tasks' doing (a batch
        # job that ended: walltime, preemption, scancel, a drain asked for),
        # and how many attempts that took back.
        self.excused: set[str] = set()
        self.attempts_excused = 0

    # -- tasks -------------------------------------------------------------

    def add(self, task_id: int, spec_id: str, arg: Any, opts: TaskOptions | None = None) -> None:
        self.add_many(spec_id, [(task_id, arg)], opts)

    def add_many(
        self, spec_id: str, items: list[tuple[int, Any]], opts: TaskOptions | None = None
    ) -> None:
        """Queue tasks of one call, in order: as many :meth:`add` calls, for one."""
        if not items:
            return
        # One pass in C where it can be: per task, only the record is made.
        self.tasks.update({tid: TaskRecord(spec_id, arg, None, opts) for tid, arg in items})
        self.spec_refs[spec_id] += len(items)
        self.pending.extend([tid for tid, _ in items], 0 if opts is None else opts.priority)
        self.queued += len(items)

    def cancel(self, task_id: int) -> tuple[str, str | None]:
        """Take a task back before it runs, if it has not started.

        Returns what it was and the worker that holds it:

        - ``("queued", None)``: forgotten, it never went out;
        - ``("prefetched", wid)``: forgotten; ``wid`` holds it behind the task
          it runs, and must be told to drop it (a CANCEL message);
        - ``("running", wid)``: left alone, it is the first ``wid`` holds;
        - ``("unknown", None)``: delivered already, or never added.
        """
        rec = self.tasks.get(task_id)
        if rec is None:
            return "unknown", None
        wid = rec.worker
        if wid is None:
            self._forget(task_id, rec)
            return "queued", None
        w = self.workers.get(wid)
        if w is not None and next(iter(w.in_flight), None) == task_id:
            return "running", wid
        if w is not None:
            w.in_flight.pop(task_id, None)
        rec.worker = None
        self.queued += 1  # _forget counts it out of the queue
        self._forget(task_id, rec)
        return "prefetched", wid

    def running(self, worker_id: str) -> int | None:
        """The task a worker runs now: the first it holds."""
        w = self.workers.get(worker_id)
        return None if w is None else next(iter(w.in_flight), None)

    def interrupt(self, worker_id: str) -> int | None:
        """A worker's process is replaced to stop the task it runs.

        That task is forgotten and returned (its caller says how it ends:
        cancelled, timed out); the tasks prefetched behind it go back to the
        front of the queue, once, counting no attempt and blaming no one.
        """
        w = self.workers.pop(worker_id, None)
        if w is None:
            return None
        self._remember(w, "interrupted")
        running: int | None = None
        back: list[int] = []
        for i, tid in enumerate(w.in_flight):
            rec = self.tasks.get(tid)
            if rec is None or rec.worker != worker_id:
                continue
            if i == 0:
                running = tid
                rec.worker = None
                self.queued += 1  # _forget counts it out of the queue
                self._forget(tid, rec)
            else:
                back.append(tid)
        self._requeue_front(back, count=False)  # never started: not a retry
        return running

    def attempts_left(self, rec: TaskRecord) -> bool:
        limit = self.max_attempts
        if rec.opts is not None and rec.opts.max_attempts is not None:
            limit = rec.opts.max_attempts
        return rec.attempts < limit

    def drop_pending(self) -> list[int]:
        """Forget every queued (not yet dispatched) task; return their ids."""
        dropped = []
        for tid in list(self.pending):
            rec = self.tasks.get(tid)
            if rec is not None and rec.worker is None:
                self._forget(tid, rec)
                dropped.append(tid)
        self.pending.clear()
        return dropped

    def _forget(self, task_id: int, rec: TaskRecord) -> None:
        del self.tasks[task_id]
        if rec.worker is None:
            self.queued -= 1
        self._unref(rec.spec_id, 1)

    def _unref(self, spec_id: str, n: int) -> None:
        left = self.spec_refs[spec_id] - n
        if left <= 0:
            del self.spec_refs[spec_id]
        else:
            self.spec_refs[spec_id] = left

    def _requeue_front(self, task_ids: list[int], count: bool = True) -> None:
        by_level: dict[int, list[int]] = {}
        for tid in task_ids:
            rec = self.tasks[tid]
            rec.worker = None
            by_level.setdefault(_priority(rec), []).append(tid)
        for priority, tids in by_level.items():
            self.pending.put_front(tids, priority)
        self.queued += len(task_ids)
        if count:
            self.redispatched += len(task_ids)

    @property
    def outstanding(self) -> int:
        """Tasks not yet delivered (queued or on a worker)."""
        return len(self.tasks)

    # -- workers -----------------------------------------------------------

    def join(self, worker: WorkerState) -> None:
        self.workers[worker.id] = worker

    def assign(self, max_per_worker: int | None = None) -> list[tuple[str, list[int]]]:
        """Hand queued tasks to workers with free capacity.

        Returns ``(worker_id, task_ids)`` pairs; the tasks are then in flight.
        Workers with the most free slots go first, so an idle worker is
        served before a busy one tops up its prefetch.

        A *suspect* (a task held by a worker that died) runs alone on an
        idle worker. When a worker dies, the controller blames the first
        task it held; but results of tasks it finished just before dying may
        have died with it, so the task that really killed it may be further
        back. Every task it held runs alone from then on, where the blame is
        exact: an innocent task is blamed at most once for another's deaths,
        and a poison task kills at most ``max_attempts + 1`` workers.
        """
        if self.paused or not self.queued:
            return []
        out: list[tuple[str, list[int]]] = []
        ready = [w for w in self.workers.values() if w.free > 0 and not self._isolated(w)]
        ready.sort(key=lambda w: -w.free)
        tasks = self.tasks
        pending = self.pending
        deferred: list[tuple[int, int]] = []
        level = pending.top()
        for w in ready:
            n = w.free if max_per_worker is None else min(w.free, max_per_worker)
            taken: list[int] = []
            while len(taken) < n and level is not None:
                # The top level's deque, popped directly: this loop is hot.
                if not level:
                    level = pending.top()
                    continue
                tid = level.popleft()
                rec = tasks.get(tid)
                if rec is None or rec.worker is not None:
                    continue  # stale: delivered or cancelled while queued
                if rec.deaths is not None:  # a suspect (not a property: hot loop)
                    if taken or w.in_flight:
                        # Keeps its place for an idle worker.
                        deferred.append((tid, _priority(rec)))
                        continue
                    n = 1
                rec.worker = w.id
                w.in_flight[tid] = None
                taken.append(tid)
            self.queued -= len(taken)
            if taken:
                out.append((w.id, taken))
            if self.queued == len(deferred):
                break
        for tid, priority in reversed(deferred):
            pending.put_front([tid], priority)
        return out

    def _isolated(self, w: WorkerState) -> bool:
        """Whether ``w`` runs a suspect, which must stay alone."""
        if not w.in_flight:
            return False
        rec = self.tasks.get(next(iter(w.in_flight)))
        return rec is not None and rec.worker == w.id and rec.deaths is not None

    def complete(self, worker_id: str, task_id: int) -> TaskRecord | None:
        """A result arrived. Returns the task's record the first time only."""
        return self.complete_many(worker_id, [task_id])[0]

    def complete_many(self, worker_id: str, task_ids: list[int]) -> list[TaskRecord | None]:
        """Results arrived, in this order: as many :meth:`complete` calls, for one.

        Each task's record comes back the first time only, else None
        (delivered already: a late or duplicate result). A late result from
        a worker declared lost, for a task queued again or running
        elsewhere, is delivered now; the other copy's result, if any, is
        then the duplicate.
        """
        w = self.workers.get(worker_id)
        if w is not None:
            in_flight = w.in_flight
            held = len(in_flight)
            for tid in task_ids:
                in_flight.pop(tid, None)
            w.done += held - len(in_flight)
        pop = self.tasks.pop
        recs = [pop(tid, None) for tid in task_ids]
        # What _forget does per task, counted once per run of one spec.
        spec_id = None
        n = 0
        for rec in recs:
            if rec is None:
                continue
            if rec.worker is None:
                self.queued -= 1  # queued again (its worker was lost), not yet out
            if rec.spec_id != spec_id:
                if n:
                    self._unref(spec_id, n)  # type: ignore[arg-type]
                spec_id, n = rec.spec_id, 0
            n += 1
        if n:
            self._unref(spec_id, n)  # type: ignore[arg-type]
        return recs

    def hand_back(self, worker_id: str, task_ids: Iterable[int], count: bool = True) -> int:
        """A leaving worker returns tasks it never started: queue them first.

        ``count``: whether they count as sent again (``redispatched``); a
        worker's own goodbye hands back tasks that never started, which do not.
        """
        w = self.workers.get(worker_id)
        back = []
        for tid in task_ids:
            if w is not None:
                w.in_flight.pop(tid, None)
            rec = self.tasks.get(tid)
            if rec is not None and rec.worker == worker_id:
                back.append(tid)
        self._requeue_front(back, count)
        return len(back)

    def unassign(self, worker_id: str, task_ids: list[int]) -> None:
        """Take back tasks just assigned but never sent: first in the queue again."""
        w = self.workers[worker_id]
        for tid in task_ids:
            del w.in_flight[tid]
        self._requeue_front(task_ids, count=False)

    def leave(self, worker_id: str) -> None:
        """A worker said goodbye after handing back its queue."""
        w = self.workers.get(worker_id)
        if w is not None and w.in_flight:
            # Not handed back and no result: queue again without blame.
            self.hand_back(worker_id, list(w.in_flight))
        if w is not None:
            self._remember(w, "left")
        self.workers.pop(worker_id, None)

    def _remember(self, w: WorkerState, state: str) -> None:
        snap = w.snapshot()
        snap.update(state=state, current_task=None, first_in_flight=None, in_flight=0)
        self.departed.pop(w.id, None)
        self.departed[w.id] = snap
        while len(self.departed) > MAX_DEPARTED:
            self.departed.popitem(last=False)

    def lose(
        self, worker_id: str, how: str, running: int | None = None
    ) -> list[tuple[int, WorkerLost]]:
        """A worker died or went silent.

        Its tasks go back to the front of the queue. The one it was running
        counts an attempt; a task that has now been running on
        ``max_attempts`` dead workers fails with ``WorkerLost``. Returns the
        failed ``(task_id, error)`` pairs, already forgotten.

        ``running``: the task the worker said it ran as it went (its guard's
        goodbye). Then that one alone is blamed, and the others go back as
        they were. Otherwise the first in flight is blamed, and every task
        it held becomes a suspect (see :meth:`assign`).
        """
        w = self.workers.pop(worker_id, None)
        if w is None:
            return []
        if running is not None and running in w.in_flight:
            return self._lose_named(w, how, running)
        self._remember(w, f"lost: {how}")
        failed: list[tuple[int, WorkerLost]] = []
        excused = self._is_excused(worker_id)
        back: list[int] = []
        for i, tid in enumerate(w.in_flight):
            rec = self.tasks.get(tid)
            if rec is None or rec.worker != worker_id:
                continue
            if excused:
                # Ended from outside: no suspect, no attempt.
                self.attempts_excused += i == 0
                back.append(tid)
                continue
            if rec.deaths is None:
                rec.deaths = []  # a suspect now
            if i == 0:
                err = self._blame(tid, rec, worker_id, how)
                if err is not None:
                    failed.append((tid, err))
                    continue
            back.append(tid)
        self._requeue_front(back)
        return failed

    def _lose_named(self, w: WorkerState, how: str, running: int) -> list[tuple[int, WorkerLost]]:
        self._remember(w, f"lost: {how}")
        back = [
            t
            for t in w.in_flight
            if t != running and (r := self.tasks.get(t)) is not None and r.worker == w.id
        ]
        self._requeue_front(back)
        rec = self.tasks.get(running)
        if rec is None or rec.worker != w.id:
            return []
        err = self._blame(running, rec, w.id, how)
        if err is None:
            self._requeue_front([running])
            return []
        return [(running, err)]

    def _blame(self, tid: int, rec: TaskRecord, worker_id: str, how: str) -> WorkerLost | None:
        """Count a lost attempt; out of attempts, forget the task and return its error."""
        rec.attempts += 1
        rec.deaths = [*(rec.deaths or ()), (worker_id, how)]
        if self.attempts_left(rec):
            return None
        rec.worker = None
        self.queued += 1  # _forget counts it out of the queue
        self._forget(tid, rec)
        return WorkerLost(tid, rec.deaths)

    def _is_excused(self, worker_id: str) -> bool:
        return any(worker_id.startswith(p) for p in self.excused)

    def excuse(self, prefix: str, lost: Iterable[str] | None = None) -> int:
        """Workers named ``prefix...`` are ended from outside: their losses are not their tasks'.

        Their losses from now on count no attempt. Of the deaths already
        recorded, only the losses of the workers in ``lost`` are taken back:
        the workers the end took (a batch system's word that a job ended
        often arrives after the controller has lost them). ``None`` takes
        back the loss of every worker named ``prefix...``. A worker of the
        prefix that crashed earlier keeps its death, and so does a result
        that never arrived (:meth:`reconcile`): neither is the end's doing.
        A task that has already failed for lack of attempts stays failed.
        Returns the attempts taken back now.
        """
        if not prefix:
            raise ValueError("an empty prefix would excuse every worker")
        self.excused.add(prefix)
        names = None if lost is None else set(lost)

        def caused(death: tuple[str, str]) -> bool:
            wid, how = death
            if how == RESULT_NEVER_ARRIVED or not wid.startswith(prefix):
                return False
            return names is None or wid in names

        back = 0
        for rec in self.tasks.values():
            if not rec.deaths:
                continue
            keep = [d for d in rec.deaths if not caused(d)]
            if len(keep) != len(rec.deaths):
                taken = len(rec.deaths) - len(keep)
                rec.attempts = max(0, rec.attempts - taken)
                rec.deaths = keep or None  # no longer a suspect
                back += taken
        self.attempts_excused += back
        return back

    def reconcile(
        self, worker_id: str, received: int, held: Iterable[int]
    ) -> tuple[list[int], list[tuple[int, WorkerLost]]]:
        """A worker said what it holds, having received every TASKS message up to ``received``.

        Its status travels behind its results on one connection, so a task
        sent to it in such a message, no longer held and not delivered, has
        lost its result on the way (a message the controller dropped). It
        goes back to the front of the queue, counting an attempt, and fails
        with ``WorkerLost`` after ``max_attempts``. A task still on its way
        to the worker (a later message) is left alone. Returns the ids
        queued again and the failed ``(task_id, error)`` pairs.
        """
        w = self.workers.get(worker_id)
        if w is None:
            return [], []
        keep = set(held)
        gone = [t for t, seq in w.in_flight.items() if seq is not None and seq <= received]
        back: list[int] = []
        failed: list[tuple[int, WorkerLost]] = []
        for tid in gone:
            if tid in keep:
                continue
            del w.in_flight[tid]
            rec = self.tasks.get(tid)
            if rec is None or rec.worker != worker_id:
                continue
            err = self._blame(tid, rec, worker_id, RESULT_NEVER_ARRIVED)
            if err is not None:
                failed.append((tid, err))
            else:
                back.append(tid)
        self._requeue_front(back)
        return back, failed

    def head_spec(self) -> str | None:
        """The function of the next task to go out, if any."""
        tasks = self.tasks
        for tid in self.pending:
            rec = tasks.get(tid)
            if rec is not None and rec.worker is None:
                return rec.spec_id
        return None

    def idle_specs(self, worker: WorkerState) -> list[str]:
        """Specs the worker holds that no undelivered task needs."""
        return [s for s in worker.specs if self.spec_refs.get(s, 0) == 0]
