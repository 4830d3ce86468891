"""Random schedules of kills, cuts, late results and duplicates, on the pure core.

A small model of workers drives the real ``Scheduler`` and ``Heartbeat``
with an injected clock: workers run the tasks they were given, results may
sit unsent (and die with their worker), links are cut and healed (results
then arrive late), some tasks kill whatever worker runs them. Whatever
happens, once healthy workers remain, every task is delivered exactly once
and retries stay bounded.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmqworkers.controller.scheduler import Scheduler, WorkerState
from zmqworkers.errors import WorkerLost
from zmqworkers.protocol.liveness import Heartbeat

MAX_ATTEMPTS = 3


@dataclass
class SimWorker:
    id: str
    state: str = "up"  # up, cut, dead, gone
    queue: list[int] = field(default_factory=list)
    outbox: list[int] = field(default_factory=list)  # results not yet arrived


class Model:
    def __init__(self, n_tasks: int, poison: set[int], seed: int) -> None:
        self.rng = random.Random(seed)
        self.sched = Scheduler(max_attempts=MAX_ATTEMPTS)
        self.hb = Heartbeat(interval=1.0, misses=3)
        self.now = 0.0
        self.poison = poison
        self.workers: dict[str, SimWorker] = {}
        self.n_joined = 0
        self.delivered: Counter[int] = Counter()
        self.ok: set[int] = set()
        self.failed: dict[int, WorkerLost] = {}
        self.kills_by: Counter[int] = Counter()
        self.sent: list[tuple[str, int]] = []
        # Queued as the engine queues calls: several at once, of two
        # functions, the odd one alone.
        cut = self.rng.randint(0, n_tasks)
        self.sched.add_many("spec", [(tid, tid) for tid in range(cut)])
        for tid in range(cut, n_tasks):
            if tid % 2:
                self.sched.add(tid, "other", tid)
            else:
                self.sched.add_many("spec", [(tid, tid)])

    # -- the controller's side, as the engine does it ----------------------

    def join(self, wid: str | None = None) -> None:
        if wid is None:
            self.n_joined += 1
            wid = f"w{self.n_joined}"
        self.workers[wid] = SimWorker(wid)
        self.sched.join(WorkerState(id=wid, capacity=self.rng.randint(1, 3)))
        self.hb.seen(wid, self.now)

    def lose(self, wid: str, how: str) -> None:
        if wid not in self.sched.workers:
            return
        self.hb.forget(wid)
        for tid, err in self.sched.lose(wid, how):
            assert len(err.deaths) == MAX_ATTEMPTS
            self.delivered[tid] += 1
            self.failed[tid] = err

    def result(self, wid: str, tid: int) -> None:
        self._complete(wid, [tid])

    def results(self, wid: str, tids: list[int]) -> None:
        """One RESULTS message; now and then with an earlier result again inside."""
        if self.sent and self.rng.random() < 0.2:
            tids = [*tids, self.rng.choice(self.sent)[1]]
            self.rng.shuffle(tids)
        self._complete(wid, tids)

    def _complete(self, wid: str, tids: list[int]) -> None:
        self.sent.extend((wid, tid) for tid in tids)
        for tid, rec in zip(tids, self.sched.complete_many(wid, tids), strict=True):
            if rec is not None:
                self.delivered[tid] += 1
                self.ok.add(tid)

    def dispatch(self) -> None:
        for wid, tids in self.sched.assign():
            w = self.workers[wid]
            assert w.state != "gone"  # never to a worker that said goodbye
            if w.state != "dead":  # sent to a dead one (not yet noticed): lost
                w.queue.extend(tids)

    def tick(self, dt: float) -> None:
        self.now += dt
        for w in self.workers.values():
            if w.state == "up" and w.id in self.sched.workers:
                self.hb.seen(w.id, self.now)
        for wid, silent in self.hb.expired(self.now):
            assert silent > self.hb.limit
            self.lose(wid, "silent")

    # -- the workers' side -------------------------------------------------

    def run(self, w: SimWorker) -> None:
        if w.state not in ("up", "cut") or not w.queue:
            return
        tid = w.queue.pop(0)
        if tid in self.poison:
            self.kills_by[tid] += 1
            self.kill(w)
        else:
            w.outbox.append(tid)

    def flush(self, w: SimWorker) -> None:
        if w.state != "up":
            return
        self.results(w.id, list(w.outbox))
        w.outbox.clear()

    def kill(self, w: SimWorker) -> None:
        if w.state not in ("up", "cut"):
            return
        was_up = w.state == "up"
        w.state = "dead"
        w.queue.clear()
        w.outbox.clear()  # results not yet sent die with the process
        if was_up:
            self.lose(w.id, "killed")  # the connection watch sees it at once

    def heal(self, w: SimWorker) -> None:
        if w.state != "cut":
            return
        w.state = "up"
        self.flush(w)  # late results
        if w.id not in self.sched.workers:
            # Declared lost meanwhile: told to rejoin, it hands back its
            # queue and says hello again with the same id.
            self.sched.hand_back(w.id, w.queue)
            self.sched.leave(w.id)
            self.join(w.id)
        else:
            self.hb.seen(w.id, self.now)

    def bye(self, w: SimWorker) -> None:
        if w.state != "up":
            return
        self.flush(w)
        self.sched.hand_back(w.id, w.queue)
        self.sched.leave(w.id)
        self.hb.forget(w.id)
        w.state = "gone"

    def duplicate(self) -> None:
        if self.sent:
            wid, tid = self.rng.choice(self.sent)
            before = self.delivered[tid]
            self.sched.complete(wid, tid)
            assert self.delivered[tid] == before

    def pick(self) -> SimWorker | None:
        alive = [w for w in self.workers.values() if w.state in ("up", "cut")]
        return self.rng.choice(alive) if alive else None

    def check(self) -> None:
        assert all(n == 1 for n in self.delivered.values()), self.delivered
        for rec in self.sched.tasks.values():
            assert rec.attempts < MAX_ATTEMPTS
        for w in self.sched.workers.values():
            assert len(w.in_flight) <= w.capacity
        # The counts kept beside the records agree with them.
        sched = self.sched
        assert sched.queued == sum(1 for r in sched.tasks.values() if r.worker is None)
        assert sched.spec_refs == Counter(r.spec_id for r in sched.tasks.values())


ACTIONS = ["join", "tick", "dispatch", "run", "flush", "kill", "cut", "heal", "bye", "dup"]


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    n_tasks=st.integers(1, 12),
    poison=st.sets(st.integers(0, 11), max_size=2),
    actions=st.lists(st.sampled_from(ACTIONS), max_size=60),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_faults_lose_nothing_and_deliver_once(
    n_tasks: int, poison: set[int], actions: list[str], seed: int
) -> None:
    m = Model(n_tasks, {p for p in poison if p < n_tasks}, seed)
    m.join()
    for action in actions:
        w = m.pick()
        if action == "join":
            m.join()
        elif action == "tick":
            m.tick(m.rng.choice([0.5, 1.0, 4.0]))
        elif action == "dispatch":
            m.dispatch()
        elif action == "dup":
            m.duplicate()
        elif w is not None:
            if action == "run":
                m.run(w)
            elif action == "flush":
                m.flush(w)
            elif action == "kill":
                m.kill(w)
            elif action == "cut" and w.state == "up":
                w.state = "cut"
            elif action == "heal":
                m.heal(w)
            elif action == "bye":
                m.bye(w)
        m.check()

    # The storm passes: links heal, the dead are noticed, two fresh workers
    # join, and work goes on until nothing is outstanding.
    for w in list(m.workers.values()):
        m.heal(w)
    m.join()
    m.join()
    for _ in range(2000):
        if not m.sched.outstanding:
            break
        m.dispatch()
        for w in list(m.workers.values()):
            m.run(w)
            if m.rng.random() < 0.5:  # else results wait, and may die with it
                m.flush(w)
        m.tick(0.5)
        if not any(w.state == "up" for w in m.workers.values()):
            m.join()
        m.check()
    assert m.sched.outstanding == 0
    assert set(m.delivered) == set(range(n_tasks))
    assert all(n == 1 for n in m.delivered.values())
    assert not (m.ok & m.poison)  # a poison task never "succeeds"
    for tid in m.poison:
        # Fails instead of killing more: one kill may be blamed elsewhere
        # (an earlier result died with the worker), then the blame is exact.
        assert m.kills_by[tid] <= MAX_ATTEMPTS + 1, (tid, m.kills_by[tid])
        assert isinstance(m.failed.get(tid), WorkerLost)
