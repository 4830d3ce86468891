"""The scaling policy under a simulated clock: pure code, no Slurm."""

from __future__ import annotations

import pytest

from zmqworkers.errors import ConfigurationError
from zmqworkers.scale.policy import (
    PENDING,
    RUNNING,
    AdaptPolicy,
    Decision,
    JobView,
    Memory,
    Pool,
    decide,
)


class SimulatedSlurm:
    """Jobs start ``start_delay`` s after submission; each running job does ``rate`` tasks/s."""

    def __init__(self, rate: float = 10.0, start_delay: float = 3.0) -> None:
        self.rate = rate
        self.start_delay = start_delay
        self.jobs: dict[str, float] = {}  # id -> submitted at
        self.queued = 0.0
        self.next_id = 1

    def pool(self, now: float) -> Pool:
        running_ids = [j for j, t in self.jobs.items() if now - t >= self.start_delay]
        busy = min(len(running_ids), int(self.queued + 0.999))
        views = tuple(
            JobView(
                j,
                RUNNING if j in running_ids else PENDING,
                busy=j in running_ids[:busy],
            )
            for j in self.jobs
        )
        running = busy
        return Pool(queued=max(0, int(self.queued + 0.999) - running), running=running, jobs=views)

    def step(self, now: float, dt: float) -> None:
        running = sum(1 for t in self.jobs.values() if now - t >= self.start_delay)
        self.queued = max(0.0, self.queued - running * self.rate * dt)

    def apply(self, d: Decision, now: float) -> None:
        for _ in range(d.submit):
            self.jobs[str(self.next_id)] = now
            self.next_id += 1
        for j in d.retire:
            del self.jobs[j]


def run(
    policy: AdaptPolicy, bursts: list[tuple[float, int]], until: float
) -> tuple[list, SimulatedSlurm]:
    sim = SimulatedSlurm()
    mem = Memory()
    actions: list[tuple[float, Decision]] = []
    now, dt = 0.0, 1.0
    pending_bursts = sorted(bursts)
    while now <= until:
        while pending_bursts and pending_bursts[0][0] <= now:
            sim.queued += pending_bursts.pop(0)[1]
        d, mem = decide(policy, sim.pool(now), now, mem)
        if d.kind in ("submit", "retire"):
            actions.append((now, d))
        sim.apply(d, now)
        sim.step(now, dt)
        now += dt
    return actions, sim


# A burst of 60 tasks every 20 s for 10 minutes: 3 jobs clear one in about 2 s.
BURSTS = [(t, 60) for t in range(0, 600, 20)]


def test_a_bursty_backlog_does_not_make_the_jobs_flap() -> None:
    damped = AdaptPolicy(minimum=0, maximum=3, cooldown=10, idle_wait=30)
    actions, sim = run(damped, BURSTS, until=700)
    changes = [(t, d.kind) for t, d in actions]
    # One submission at the first burst, one retirement after the last.
    assert changes[0] == (0.0, "submit") and actions[0][1].submit == 3
    assert [k for _, k in changes] == ["submit", "retire"], changes
    assert 600 <= changes[-1][0] <= 600 + 30 + 10
    assert not sim.jobs
    # The same backlog without hysteresis and cool-down flaps at every burst.
    naive = AdaptPolicy(minimum=0, maximum=3, cooldown=0, idle_wait=0)
    flapping, _ = run(naive, BURSTS, until=700)
    assert len(flapping) >= 2 * len(BURSTS), len(flapping)


def test_no_job_is_submitted_within_the_cool_down_after_a_retirement() -> None:
    policy = AdaptPolicy(minimum=0, maximum=3, cooldown=10, idle_wait=5)
    mem = Memory()
    idle = Pool(0, 0, (JobView("1", RUNNING),))
    d, mem = decide(policy, idle, 0.0, mem)
    assert d.kind == "hold" and "surplus for 0 s of 5" in d.reason
    d, mem = decide(policy, idle, 5.0, mem)
    assert d.kind == "retire" and d.retire == ("1",)
    d, mem = decide(policy, Pool(10, 0, ()), 9.0, mem)
    assert d.kind == "hold" and "cool-down" in d.reason and d.submit == 0
    d, mem = decide(policy, Pool(10, 0, ()), 15.0, mem)
    assert d.kind == "submit" and d.submit == 3


def test_pending_jobs_are_retired_before_idle_ones_and_busy_ones_never() -> None:
    policy = AdaptPolicy(minimum=0, maximum=4, cooldown=0, idle_wait=0)
    jobs = (
        JobView("1", RUNNING, busy=True),
        JobView("2", RUNNING, busy=False),
        JobView("3", PENDING),
        JobView("4", RUNNING, busy=True),
    )
    d, _ = decide(policy, Pool(0, 2, jobs), 0.0, Memory())
    # Two tasks running want 2 jobs: the pending one goes, then the idle one.
    assert d.kind == "retire" and d.retire == ("3", "2")
    d, _ = decide(policy, Pool(0, 0, jobs[:1] + jobs[3:]), 0.0, Memory())
    assert d.kind == "hold" and "every job is busy" in d.reason
    forced = AdaptPolicy(maximum=4, cooldown=0, idle_wait=0, retire_busy=True)
    d, _ = decide(forced, Pool(0, 0, jobs[:1] + jobs[3:]), 0.0, Memory())
    assert d.retire == ("4", "1")


def test_a_job_that_ended_is_replaced_while_work_remains() -> None:
    policy = AdaptPolicy(minimum=0, maximum=2, cooldown=10, idle_wait=30)
    d, mem = decide(policy, Pool(100, 0, ()), 0.0, Memory())
    assert d.submit == 2
    # One job ended (walltime, scancel): only the other is left.
    d, mem = decide(policy, Pool(90, 1, (JobView("1", RUNNING, busy=True),)), 20.0, mem)
    assert d.kind == "submit" and d.submit == 1 and "have 1" in d.reason


def test_bounds_and_processes_per_job() -> None:
    policy = AdaptPolicy(minimum=1, maximum=5, processes_per_job=4, cooldown=0, idle_wait=0)
    d, _ = decide(policy, Pool(0, 0, ()), 0.0, Memory())
    assert d.submit == 1  # the minimum holds with no work
    d, _ = decide(policy, Pool(9, 0, ()), 0.0, Memory())
    assert d.submit == 3  # 9 tasks / 4 processes per job
    d, _ = decide(policy, Pool(1000, 0, ()), 0.0, Memory())
    assert d.submit == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"minimum": 3, "maximum": 2}, "must not be below minimum"),
        ({"maximum": -1}, "maximum must be a whole number"),
        ({"processes_per_job": 0}, "processes_per_job must be 1 or more"),
        ({"cooldown": float("nan")}, "cooldown must be a finite number"),
    ],
)
def test_bad_policies_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        AdaptPolicy(**kwargs)
