"""Dispatch: tasks out as FUNC and TASKS messages, results in.

Each worker gets a function's spec once (and is told which idle specs to
forget); tasks go in batches the :class:`~.batching.Batcher` sizes, split
again when their payloads turn out larger than the function's so far.
"""

from __future__ import annotations

import logging
import operator
from collections import Counter
from collections.abc import Callable
from itertools import compress
from typing import Any

from zmqworkers.controller.batching import Batcher
from zmqworkers.controller.scheduler import Scheduler
from zmqworkers.errors import MessageTooLarge, make_remote_error
from zmqworkers.protocol import Kind
from zmqworkers.protocol.records import Status, check_results, remote_error
from zmqworkers.protocol.serialize import dumps

log = logging.getLogger(__name__)

_task_id, _ok = operator.itemgetter(0), operator.itemgetter(1)

# A worker that keeps more specs than this is told to forget idle ones.
MAX_WORKER_SPECS = 64

Send = Callable[[str, Kind, Any, Any], bool]
Deliver = Callable[[list[tuple[int, bool, Any]]], None]


class Dispatcher:
    """Turns the scheduler's assignments into messages and results into deliveries."""

    def __init__(
        self,
        sched: Scheduler,
        batcher: Batcher,
        send: Send,
        deliver: Deliver,
        host: str,
        stats: Counter[str],
        last_seq: Callable[[], int],
    ) -> None:
        self._sched = sched
        self._batcher = batcher
        self._send = send
        self._deliver = deliver
        self._host = host
        self._stats = stats
        self._last_seq = last_seq
        # Whether any task was given a timeout (the engine's TaskControl says).
        self.timed: Callable[[], bool] = lambda: False
        # Whether a worker's session packs mid-size buffers (the engine says).
        self.packs: Callable[[str], bool] = lambda wid: False

    def run(self) -> None:
        """Send what the scheduler assigns: each function once per worker, tasks in batches."""
        sched = self._sched
        head = sched.head_spec()
        if head is not None:
            batch = self._batcher.batch_for(head)
            for state in sched.workers.values():
                state.batch = batch
        for wid, tids in sched.assign():
            # A send that finds a worker gone reads pending results first
            # (see _lose): later workers in this round may have left, and
            # their tasks may have been delivered by a late result.
            w = sched.workers.get(wid)
            if w is None:
                continue
            groups = _by_spec(sched, tids)
            for spec_id, items in groups.items():
                if spec_id not in w.specs:
                    header: dict[str, Any] = {"spec": spec_id}
                    idle = sched.idle_specs(w) if len(w.specs) >= MAX_WORKER_SPECS else []
                    if idle:
                        header["forget"] = idle
                        w.specs.difference_update(idle)
                    frames = self._batcher.specs[spec_id].frames
                    try:
                        if not self._send(wid, Kind.FUNC, header, frames):
                            break
                    except MessageTooLarge as exc:
                        what = "the function with its shared arguments makes a message"
                        self._fail_too_large(wid, [tid for tid, _ in items], what, exc)
                        continue
                    w.specs.add(spec_id)
                try:
                    body = dumps(items, by_value=True, pack=self.packs(wid))
                except Exception:
                    # Find the culprits: only they fail, the rest go out.
                    items = self._drop_unsendable(wid, items)
                    if not items:
                        continue
                    body = dumps(items, by_value=True, pack=self.packs(wid))
                size = sum(memoryview(f).nbytes for f in body) / len(items)
                fit = self._batcher.fit(spec_id, size, len(items))
                if fit < len(items):
                    sched.unassign(wid, [tid for tid, _ in items[fit:]])
                    items = items[:fit]
                    body = dumps(items, by_value=True, pack=self.packs(wid))
                if not self._send_tasks(wid, spec_id, items, body):
                    break

    def _send_tasks(self, wid: str, spec_id: str, items: list[tuple[int, Any]], body: Any) -> bool:
        """Send one TASKS message; False if the worker has gone.

        A message over the session's size limit is never sent: the worker's
        socket would close the connection on it, and the worker would be
        lost with the task still queued for the next one. Several tasks
        too large together go out in smaller messages; one task too large
        alone fails at once with :class:`MessageTooLarge`.
        """
        header: dict[str, Any] = {"spec": spec_id}
        if self.timed():
            # A task here with a timeout: the worker sends held results
            # before each task starts, so the controller knows which runs.
            tasks = self._sched.tasks
            if any((r := tasks.get(t)) and r.opts and r.opts.timeout for t, _ in items):
                header["watch"] = True
        while True:
            try:
                if not self._send(wid, Kind.TASKS, header, body):
                    return False
            except MessageTooLarge as exc:
                if len(items) == 1:
                    what = "the task's argument makes a message"
                    self._fail_too_large(wid, [items[0][0]], what, exc)
                    return True
                half = len(items) // 2
                self._sched.unassign(wid, [tid for tid, _ in items[half:]])
                items = items[:half]
                body = dumps(items, by_value=True, pack=self.packs(wid))
                continue
            # Which message carried each task: the worker's status names the
            # last one it received, so the controller can tell a task still
            # on its way from one whose result went missing (reconcile).
            seq = self._last_seq()
            w = self._sched.workers.get(wid)
            if w is not None:
                marks = dict.fromkeys([tid for tid, _ in items], seq)
                if w.in_flight.keys() >= marks.keys():
                    w.in_flight.update(marks)
                else:  # some completed meanwhile: mark only those still held
                    for tid in marks.keys() & w.in_flight.keys():
                        w.in_flight[tid] = seq
            self._stats["dispatched"] += len(items)
            return True

    def _fail_too_large(
        self, wid: str, task_ids: list[int], what: str, exc: MessageTooLarge
    ) -> None:
        out: list[tuple[int, bool, Any]] = []
        for tid in task_ids:
            if self._sched.complete(wid, tid) is None:
                continue
            err = MessageTooLarge(
                f"{what} of {exc.size} bytes, over the limit of {exc.limit} bytes "
                "(max_message_size: the smaller of the controller's and the worker's). "
                "Not sent: pass large data another way (a shared file), or raise "
                "max_message_size on both sides",
                exc.size,
                exc.limit,
            )
            out.append((tid, False, err))
        self._stats["too_large"] += len(out)
        self._deliver(out)

    def _drop_unsendable(self, wid: str, items: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
        good, out = [], []
        for item in items:
            try:
                dumps(item, by_value=True)
                good.append(item)
            except Exception as exc:
                if self._sched.complete(wid, item[0]) is not None:
                    err = make_remote_error(
                        type(exc).__name__,
                        f"the task's argument cannot be pickled: {exc}",
                        "",
                        "(not sent)",
                        self._host,
                        exc,
                    )
                    out.append((item[0], False, err))
        self._deliver(out)
        return good

    def take_results(self, wid: str, items: Any) -> str | None:
        """Complete and deliver a RESULTS payload; the spec id of its tasks."""
        # Checked whole before any is taken: a bad entry late in a batch must
        # not leave earlier ones completed but never delivered.
        check_results(items, wid)
        # One scheduler call per message, and per task only passes in C:
        # a record for each task delivered now, None for a duplicate.
        recs = self._sched.complete_many(wid, list(map(_task_id, items)))
        out: list[tuple[int, bool, Any]] = list(map(tuple, compress(items, recs)))
        if len(out) < len(items):
            self._stats["duplicates"] += len(items) - len(out)
        if not all(map(_ok, out)):
            w = self._sched.workers.get(wid)
            host = w.host if w is not None else ""
            out = [
                item if item[1] else (item[0], False, remote_error(item[2], wid, host))
                for item in out
            ]
        self._deliver(out)
        return next((rec.spec_id for rec in reversed(recs) if rec is not None), None)

    def reconcile(self, wid: str, status: Status) -> None:
        """Tasks the worker no longer holds whose result never came: again, or failed."""
        if status.held is None or status.received is None:
            return  # a heartbeat from the heartbeat thread: says nothing of tasks
        back, failed = self._sched.reconcile(wid, status.received, status.held)
        if back or failed:
            log.warning(
                "worker %s no longer holds task(s) %s, whose result never arrived: "
                "%d queued again, %d failed",
                wid,
                [*back, *(tid for tid, _ in failed)],
                len(back),
                len(failed),
            )
            self._stats["results_lost"] += len(back) + len(failed)
            self._deliver([(tid, False, err) for tid, err in failed])


def _by_spec(sched: Scheduler, tids: list[int]) -> dict[str, list[tuple[int, Any]]]:
    """Assigned tasks as ``(id, argument)`` by function, in order: usually one group."""
    get = sched.tasks.get
    recs = [(tid, get(tid)) for tid in tids]
    first = next((rec.spec_id for _, rec in recs if rec is not None), None)
    if first is None:
        return {}
    if all(rec is None or rec.spec_id == first for _, rec in recs):
        return {first: [(tid, rec.arg) for tid, rec in recs if rec is not None]}
    groups: dict[str, list[tuple[int, Any]]] = {}
    for tid, rec in recs:
        if rec is not None:
            groups.setdefault(rec.spec_id, []).append((tid, rec.arg))
    return groups
