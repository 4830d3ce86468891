"""Lost, oversized and slow messages on the pure core, with the workers' statuses.

Extends the fault model of ``test_scheduler_property``: TASKS messages are
numbered and take a while to arrive, results and statuses travel in order on
one connection per worker and may wait there, a result message may be lost
on the way (as one the controller cannot decode), some arguments are too
large to send and some results too large to return. Workers send their
status (what they hold, the last TASKS message they got) behind their
results, and the controller reconciles. Whatever happens: every task is
delivered exactly once, nothing hangs once healthy workers remain, and no
task runs twice unless a retry was needed (its worker was lost, or its
result was lost on the way).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_scheduler_property import MAX_ATTEMPTS, Model, SimWorker
from zmqworkers.errors import WorkerLost


@dataclass
class Link(SimWorker):
    # TASKS messages on their way to the worker: (message number, task ids).
    inbox: list[tuple[int, list[int]]] = field(default_factory=list)
    # The results connection: ("result", id, ok) and ("status", held, received, session).
    wire: list[tuple[Any, ...]] = field(default_factory=list)
    received: int = 0  # the last TASKS message it got, this session
    session: int = 0


class SizeModel(Model):
    def __init__(self, n_tasks: int, big_args: set[int], big_results: set[int], seed: int) -> None:
        super().__init__(n_tasks, set(), seed)
        self.big_args = big_args
        self.big_results = big_results
        self.seq = 0
        self.sessions = 0
        self.runs: Counter[int] = Counter()
        # Tasks that had a reason to run again: held by a lost worker, or
        # their result lost on the way.
        self.excused: set[int] = set()
        self.too_large: set[int] = set()

    def join(self, wid: str | None = None) -> None:
        super().join(wid)
        joined = wid or f"w{self.n_joined}"
        self.sessions += 1
        link = Link(joined, session=self.sessions)
        self.workers[joined] = link

    def lose(self, wid: str, how: str) -> None:
        w = self.sched.workers.get(wid)
        if w is not None:
            self.excused.update(w.in_flight)
        super().lose(wid, how)

    def dispatch(self) -> None:
        for wid, tids in self.sched.assign():
            w = self.workers[wid]
            assert isinstance(w, Link) and w.state != "gone"
            sendable = []
            for tid in tids:
                if tid in self.big_args:  # never sent: fails at once
                    assert self.sched.complete(wid, tid) is not None
                    self.delivered[tid] += 1
                    self.too_large.add(tid)
                else:
                    sendable.append(tid)
            if not sendable:
                continue
            self.seq += 1
            state = self.sched.workers[wid]
            for tid in sendable:
                state.in_flight[tid] = self.seq
            if w.state != "dead":
                w.inbox.append((self.seq, sendable))

    def arrive_tasks(self, w: Link) -> None:
        """The oldest TASKS message reaches the worker (sends take a while)."""
        if w.state in ("up", "cut") and w.inbox:
            seq, tids = w.inbox.pop(0)
            w.queue.extend(tids)
            w.received = seq

    def run(self, w: SimWorker) -> None:
        if w.state in ("up", "cut") and w.queue:
            self.runs[w.queue[0]] += 1
        super().run(w)

    def flush(self, w: SimWorker) -> None:
        """Results done so far go onto the connection (they arrive later)."""
        assert isinstance(w, Link)
        if w.state != "up":
            return
        for tid in w.outbox:
            w.wire.append(("result", tid, tid not in self.big_results))
        w.outbox.clear()

    def status(self, w: Link) -> None:
        if w.state == "up":
            held = list(w.queue) + list(w.outbox)
            w.wire.append(("status", held, w.received, w.session))

    def arrive(self, w: Link) -> None:
        """What is on the connection reaches the controller, in order."""
        if w.state != "up":
            return
        while w.wire:
            item = w.wire.pop(0)
            if item[0] == "result":
                self.result(w.id, item[1])
            elif item[3] == w.session and w.id in self.sched.workers:
                back, failed = self.sched.reconcile(w.id, item[2], item[1])
                # Taken back: only a task whose result was lost may be.
                assert set(back) <= self.excused, (back, self.excused)
                for tid, err in failed:
                    assert isinstance(err, WorkerLost)
                    self.delivered[tid] += 1
                    self.failed[tid] = err

    def drop_result(self, w: Link) -> None:
        """A result message is lost on the way (the controller could not read it)."""
        results = [i for i, item in enumerate(w.wire) if item[0] == "result"]
        if results:
            _, tid, _ = w.wire.pop(self.rng.choice(results))
            self.excused.add(tid)

    def kill(self, w: SimWorker) -> None:
        assert isinstance(w, Link)
        if w.state in ("up", "cut"):
            w.inbox.clear()
            w.wire.clear()  # what it had sent dies with its process
        super().kill(w)

    def heal(self, w: SimWorker) -> None:
        assert isinstance(w, Link)
        if w.state != "cut":
            return
        w.state = "up"
        self.arrive(w)  # late results (and statuses of a session that may be over)
        if w.id not in self.sched.workers:
            self.sched.hand_back(w.id, w.queue)
            self.sched.leave(w.id)
            w.queue.clear()
            w.inbox.clear()
            self.join(w.id)
        else:
            self.hb.seen(w.id, self.now)

    def bye(self, w: SimWorker) -> None:
        assert isinstance(w, Link)
        if w.state != "up":
            return
        self.flush(w)
        self.arrive(w)
        # Tasks still on their way are handed back by the scheduler on leave.
        super().bye(w)

    def check(self) -> None:
        super().check()
        for tid, n in self.runs.items():
            # No task runs twice unless a retry was needed.
            assert n <= 1 or tid in self.excused, (tid, n)


ACTIONS = [
    "join",
    "tick",
    "dispatch",
    "arrive_tasks",
    "run",
    "flush",
    "status",
    "arrive",
    "drop",
    "kill",
    "cut",
    "heal",
    "bye",
]


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    n_tasks=st.integers(1, 10),
    big_args=st.sets(st.integers(0, 9), max_size=2),
    big_results=st.sets(st.integers(0, 9), max_size=2),
    actions=st.lists(st.sampled_from(ACTIONS), max_size=60),
    seed=st.integers(0, 2**32 - 1),
)
def test_lost_oversized_and_slow_messages_lose_nothing_and_run_nothing_twice(
    n_tasks: int, big_args: set[int], big_results: set[int], actions: list[str], seed: int
) -> None:
    m = SizeModel(n_tasks, big_args, big_results, seed)
    m.join()
    for action in actions:
        w = m.pick()
        if action == "join":
            m.join()
        elif action == "tick":
            m.tick(m.rng.choice([0.5, 1.0, 4.0]))
        elif action == "dispatch":
            m.dispatch()
        elif isinstance(w, Link):
            if action == "arrive_tasks":
                m.arrive_tasks(w)
            elif action == "run":
                m.run(w)
            elif action == "flush":
                m.flush(w)
            elif action == "status":
                m.status(w)
            elif action == "arrive":
                m.arrive(w)
            elif action == "drop":
                m.drop_result(w)
            elif action == "kill":
                m.kill(w)
            elif action == "cut" and w.state == "up":
                w.state = "cut"
            elif action == "heal":
                m.heal(w)
            elif action == "bye":
                m.bye(w)
        m.check()

    # The storm passes: links heal, two fresh workers join, messages flow
    # (some results still lost, statuses sent), until nothing is outstanding.
    for w in list(m.workers.values()):
        m.heal(w)
    m.join()
    m.join()
    for _ in range(3000):
        if not m.sched.outstanding:
            break
        m.dispatch()
        for w in list(m.workers.values()):
            assert isinstance(w, Link)
            m.arrive_tasks(w)
            m.run(w)
            m.flush(w)
            if m.rng.random() < 0.1:
                m.drop_result(w)
            m.status(w)
            if m.rng.random() < 0.7:  # else they wait on the connection
                m.arrive(w)
        m.tick(0.5)
        if not any(w.state == "up" for w in m.workers.values()):
            m.join()
        m.check()
    assert m.sched.outstanding == 0, "something hung"
    assert set(m.delivered) == set(range(n_tasks))
    assert all(n == 1 for n in m.delivered.values())
    assert m.too_large == big_args & set(range(n_tasks))
    assert not m.runs.keys() & m.too_large  # never sent, never run
    for tid, err in m.failed.items():
        # Failed only after max_attempts tries, each excused.
        assert len(err.deaths) == MAX_ATTEMPTS and tid in m.excused
