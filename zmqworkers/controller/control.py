"""Control over running tasks: cancel, interrupt, timeouts. Runs on the engine thread.

Where a task is, and what a cancel takes back, is the scheduler's
(:meth:`~.scheduler.Scheduler.cancel`, pure). What needs a clock or a
process lives here:

- a prefetched task taken back is dropped by its worker on a CANCEL message;
- a running task is interrupted by replacing its worker process: a local
  one is killed by the launcher (with its process group), a daemon's ends
  itself on an INTERRUPT broadcast and its supervisor starts another. The
  tasks prefetched behind it go back to the queue once, counting no attempt;
- a task's running time is counted from when it became the first its worker
  holds. That is the one it runs because TASKS messages with a task that
  has a timeout are marked ``watch``, and the worker then sends the results
  it holds back before it starts each of their tasks (elsewhere it holds
  them for a batch, and the first task the controller sees held may be done
  while another runs). So the clock starts no earlier than the call, and
  late by the time the previous result takes to arrive. Past its timeout,
  and with no result of it waiting unread, the task is interrupted and
  fails with :class:`~zmqworkers.errors.TaskTimeout`. A result the worker
  sends in that very moment is lost with the process: the task had run
  for its whole timeout.
- a task cancelled with force that the controller sees as prefetched may
  have started (held-back results again): the worker is told, drops it if
  it has not, and ends its process if it runs it (see ``worker/guard.py``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from zmqworkers.controller.launcher import LocalWorkers
from zmqworkers.controller.scheduler import Scheduler, TaskOptions
from zmqworkers.errors import TaskTimeout
from zmqworkers.protocol import Kind
from zmqworkers.protocol.records import Cancel, Interrupt

log = logging.getLogger(__name__)

# Task ids per CANCEL or INTERRUPT message: at most 9 bytes each, so a part
# stays far below the 64 KiB a message header may take, beside the rest.
CANCEL_CHUNK = 2048

# An INTERRUPT goes out again this often, for this long (see _broadcast).
REPEAT_EVERY = 0.2
REPEAT_FOR = 5.0

Deliver = Callable[[list[tuple[int, bool, Any]]], None]


class TaskControl:
    """Cancels, interrupts and timeouts for one engine."""

    def __init__(
        self,
        task_timeout: float | None,
        sched: Scheduler,
        local: LocalWorkers,
        send: Callable[..., bool],
        publish: Callable[[Kind, Any], None],
    ) -> None:
        self._sched = sched
        self._local = local
        self._send = send
        self._publish = publish
        self._retire: Callable[[str], None] = lambda wid: None
        self._deliver: Deliver = lambda out: None
        self._on_event: Callable[[str, Any], None] = lambda name, data: None
        self._take_results: Callable[[], None] = lambda: None
        self._stats: Counter[str] = Counter()
        # What a task submitted without options of its own gets.
        self._default = TaskOptions(timeout=task_timeout) if task_timeout else None
        # Per worker: the task it runs and since when (engine clock).
        self._running: dict[str, tuple[int, float]] = {}
        self.timed = False  # some task was given a timeout: watch the clock
        # Interrupt orders to publish again (header, until when), and when next.
        self._repeats: list[tuple[dict[str, Any], float]] = []
        self._next_repeat = float("inf")
        self._next_deadline = float("inf")

    def wire(
        self,
        retire: Callable[[str], None],
        deliver: Deliver,
        stats: Counter[str],
        on_event: Callable[[str, Any], None],
        take_results: Callable[[], None],
    ) -> None:
        """What the engine does when a worker is retired and a task fails, its
        counts, its handler's events, and how it reads the results that wait."""
        self._retire, self._deliver, self._stats = retire, deliver, stats
        self._on_event, self._take_results = on_event, take_results

    def options_for(self, opts: TaskOptions | None) -> TaskOptions | None:
        """The options submitted tasks get: their own, else the default."""
        opts = opts or self._default
        if opts is not None and opts.timeout is not None:
            self.timed = True
        return opts

    def cancel(self, task_ids: list[int], force: bool) -> list[bool]:
        """Take tasks back; with ``force`` interrupt running ones. Whether each was cancelled.

        The tasks taken back reach the faces as cancelled (the ``cancelled``
        event), whether or not whoever asked still waits for this answer.
        """
        out: list[bool] = []
        tell: dict[str, list[int]] = {}
        for tid in task_ids:
            what, wid = self._sched.cancel(tid)
            if what == "prefetched" and wid is not None:
                tell.setdefault(wid, []).append(tid)
            elif what == "running" and force and wid is not None:
                self.interrupt(wid, "cancelled with force")
                what = "interrupted"
            out.append(what in ("queued", "prefetched", "interrupted"))
        for wid, held in tell.items():
            # In parts that fit a message header with room to spare: a
            # worker may hold tens of thousands of tasks.
            for at in range(0, len(held), CANCEL_CHUNK):
                tids = held[at : at + CANCEL_CHUNK]
                self._send(wid, Kind.CANCEL, Cancel(tids).header())
                if force:
                    # Prefetched as far as the controller knows; but the worker
                    # holds results back for a batch, so it may have moved on
                    # to one of these already. It knows: its guard thread ends
                    # the process if it runs one, and it never starts one.
                    session = w.session if (w := self._sched.workers.get(wid)) else ""
                    self._broadcast(Interrupt(wid, None, tuple(tids), session))
        self._stats["cancelled"] += sum(out)
        if any(out):
            taken = [tid for tid, ok in zip(task_ids, out, strict=True) if ok]
            self._on_event("cancelled", taken)
        return out

    def interrupt(self, wid: str, why: str) -> int | None:
        """Replace a worker's process to stop its running task; return that task's id."""
        w = self._sched.workers.get(wid)
        if w is None:
            return None
        tid = self._sched.interrupt(wid)
        self._running.pop(wid, None)
        # Killed before its session ends: the session's segments then go
        # once the process is reaped (LocalWorkers.end_segments_at_exit).
        killed = w.local and self._local.interrupt(w.pid)
        self._retire(wid)
        if not killed:
            self._broadcast(Interrupt(wid, tid, session=w.session))
        log.info("worker %s (pid %d) replaced to interrupt task %s: %s", wid, w.pid, tid, why)
        self._stats["interrupted"] += 1
        return tid

    def _broadcast(self, order: Interrupt) -> None:
        """Publish an order, and again every REPEAT_EVERY for REPEAT_FOR seconds.

        A broadcast is missed by a subscriber not connected at that moment
        (its link was being re-made), and then the call would run to its
        end and the tasks handed back would run twice. Repeats are harmless:
        the order names the worker's session, so it never reaches the next
        process under the same name, and a guard acts on the first it reads.
        """
        header = order.header()
        self._publish(Kind.INTERRUPT, header)
        now = time.monotonic()
        self._repeats.append((header, now + REPEAT_FOR))
        self._next_repeat = min(self._next_repeat, now + REPEAT_EVERY)

    def _repeat(self, now: float) -> None:
        if now < self._next_repeat:
            return
        self._repeats = [(h, until) for h, until in self._repeats if until > now]
        for header, _ in self._repeats:
            self._publish(Kind.INTERRUPT, header)
        self._next_repeat = now + REPEAT_EVERY if self._repeats else float("inf")

    def next_deadline(self) -> float:
        return min(self._next_deadline if self.timed else float("inf"), self._next_repeat)

    def check(self, now: float) -> None:
        """Note when each worker's running task started; interrupt those past their
        timeout; repeat the interrupt orders still within their time."""
        self._repeat(now)
        if not self.timed:
            return
        sched = self._sched
        running = self._running
        nearest = float("inf")
        late: list[tuple[str, int, float]] = []
        for wid, w in sched.workers.items():
            head = next(iter(w.in_flight), None)
            if head is None:
                running.pop(wid, None)
                continue
            seen = running.get(wid)
            if seen is None or seen[0] != head:
                seen = running[wid] = (head, now)
            rec = sched.tasks.get(head)
            if rec is None or rec.opts is None or rec.opts.timeout is None:
                continue
            deadline = seen[1] + rec.opts.timeout
            if now >= deadline:
                late.append((wid, head, rec.opts.timeout))
            else:
                nearest = min(nearest, deadline)
        for wid in [wid for wid in running if wid not in sched.workers]:
            del running[wid]
        self._next_deadline = nearest
        if late:
            # A result that waits unread says the task is done: read them
            # first, and interrupt only a task still the first its worker holds.
            self._take_results()
            late = [t for t in late if sched.running(t[0]) == t[1]]
        for wid, tid, seconds in late:
            host = sched.workers[wid].host
            if self.interrupt(wid, f"past its timeout of {seconds:g} s") == tid:
                self._stats["timed_out"] += 1
                self._deliver([(tid, False, TaskTimeout(tid, wid, host, seconds))])
