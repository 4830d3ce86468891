"""Random schedules of cancels, timeouts and recycling mixed with kills, on the pure core.

A small model drives the real ``Scheduler`` as the engine and its task
control do: cancels take tasks back from the queue or (with a CANCEL
message) from the worker that prefetched them; a forced cancel or a timeout
interrupts a worker, which is replaced; a worker recycles after a few tasks,
handing back what it holds; workers are killed at random. Messages to a
worker arrive in order, before it starts its next task (the worker reads
its socket before each task). Whatever happens: nothing is lost, nothing is
delivered twice, and no cancelled task runs or is delivered.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmqworkers.controller.scheduler import Scheduler, TaskOptions, WorkerState

MAX_ATTEMPTS = 3


@dataclass
class SimWorker:
    id: str
    alive: bool = True
    queue: list[int] = field(default_factory=list)  # received, not started
    outbox: list[int] = field(default_factory=list)  # results not yet arrived
    ran: int = 0


class Model:
    def __init__(self, n_tasks: int, recycle_after: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.sched = Scheduler(max_attempts=MAX_ATTEMPTS)
        self.workers: dict[str, SimWorker] = {}
        self.n = 0
        self.recycle_after = recycle_after
        self.delivered: Counter[int] = Counter()
        self.cancelled: set[int] = set()
        self.started: set[int] = set()  # tasks some worker began to run
        self.started_after_cancel: set[int] = set()
        for tid in range(n_tasks):
            self.sched.add(tid, "f", tid, TaskOptions(priority=self.rng.randint(-1, 1)))

    def join(self) -> None:
        self.n += 1
        wid = f"w{self.n}"
        self.workers[wid] = SimWorker(wid)
        self.sched.join(WorkerState(id=wid, capacity=self.rng.randint(1, 3)))

    def live(self) -> list[SimWorker]:
        return [w for w in self.workers.values() if w.alive]

    def dispatch(self) -> None:
        for wid, tids in self.sched.assign():
            assert not set(tids) & self.cancelled
            self.workers[wid].queue.extend(tids)

    def run(self, w: SimWorker) -> None:
        """Start the first task the worker holds, or finish the one it runs."""
        if not w.queue:
            return
        tid = w.queue[0]
        if tid not in self.started:
            self.started.add(tid)
            if tid in self.cancelled:
                self.started_after_cancel.add(tid)
            return
        w.queue.pop(0)
        w.outbox.append(tid)
        w.ran += 1
        if self.recycle_after and w.ran >= self.recycle_after:
            self.bye(w)

    def flush(self, w: SimWorker) -> None:
        for tid in w.outbox:
            if self.sched.complete(w.id, tid) is not None:
                assert tid not in self.cancelled
                self.delivered[tid] += 1
        w.outbox.clear()

    def bye(self, w: SimWorker) -> None:
        self.flush(w)
        self.sched.hand_back(w.id, w.queue)
        self.sched.leave(w.id)
        w.alive = False
        self.join()  # recycled: a fresh process

    def kill(self, w: SimWorker) -> None:
        w.alive = False
        w.outbox.clear()
        for tid, _err in self.sched.lose(w.id, "killed"):
            self.delivered[tid] += 1

    def cancel(self, tid: int, force: bool) -> None:
        what, wid = self.sched.cancel(tid)
        if what in ("queued", "prefetched"):
            self.cancelled.add(tid)
        if what == "prefetched":
            # The CANCEL arrives before the worker's next task.
            # One it started already (the result of the one before it still
            # on its way) runs to the end; its result is dropped.
            w = self.workers[wid]  # type: ignore[index]
            if tid in w.queue and tid not in self.started:
                w.queue.remove(tid)
        if what == "running" and force:
            self.interrupt(self.workers[wid], cancel=True)  # type: ignore[index]

    def interrupt(self, w: SimWorker, cancel: bool) -> None:
        """Its process replaced: the running task is cancelled or fails (a timeout)."""
        tid = self.sched.interrupt(w.id)
        w.alive = False
        w.outbox.clear()
        if tid is not None:
            if cancel:
                self.cancelled.add(tid)
            else:
                self.delivered[tid] += 1  # TaskTimeout
        self.join()

    def check(self) -> None:
        assert all(n == 1 for n in self.delivered.values()), self.delivered
        assert not (set(self.delivered) & self.cancelled)
        assert not self.started_after_cancel
        for wst in self.sched.workers.values():
            assert len(wst.in_flight) <= wst.capacity


ACTIONS = ["join", "dispatch", "run", "flush", "kill", "cancel", "force", "timeout"]


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    n_tasks=st.integers(1, 15),
    recycle_after=st.integers(0, 4),
    actions=st.lists(st.sampled_from(ACTIONS), max_size=60),
    seed=st.integers(0, 2**32 - 1),
)
def test_cancels_timeouts_and_recycling_lose_nothing_and_run_no_cancelled_task(
    n_tasks: int, recycle_after: int, actions: list[str], seed: int
) -> None:
    m = Model(n_tasks, recycle_after, seed)
    m.join()
    for action in actions:
        live = m.live()
        w = m.rng.choice(live) if live else None
        if action == "join":
            m.join()
        elif action == "dispatch":
            m.dispatch()
        elif action in ("cancel", "force"):
            m.cancel(m.rng.randrange(n_tasks), force=action == "force")
        elif w is not None:
            if action == "run":
                m.run(w)
            elif action == "flush":
                m.flush(w)
            elif action == "kill":
                m.kill(w)
            elif action == "timeout" and w.queue and w.queue[0] in m.started:
                m.interrupt(w, cancel=False)
        m.check()

    # Calm: two fresh workers, and work goes on until nothing is outstanding.
    m.join()
    m.join()
    for _ in range(2000):
        if not m.sched.outstanding:
            break
        m.dispatch()
        for w in m.live():
            m.run(w)
            m.run(w)
            m.flush(w)
        m.check()
    assert m.sched.outstanding == 0
    # Every task ended once: delivered (a result, a failure) or cancelled.
    assert set(m.delivered) | m.cancelled == set(range(n_tasks))
    assert all(n == 1 for n in m.delivered.values())
