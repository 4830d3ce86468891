"""How many batch jobs a backlog wants, and when to change their number. Pure code.

No clock, no subprocess, no logging: :func:`decide` takes the backlog, the
jobs and the time, and returns a :class:`Decision` (with the one line that
says why) and the memory for the next call. Tests drive it with any clock.

Flapping is kept away in two ways:

- hysteresis: a job is submitted as soon as the backlog wants one, but
  retired only after the pool has been larger than wanted for
  ``idle_wait`` seconds without a break, and only if it is idle (or still
  pending);
- cool-down: no job is retired within ``cooldown`` seconds of a submission,
  and none submitted within ``cooldown`` seconds of a retirement.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace

from zmqworkers.errors import ConfigurationError

PENDING = "pending"
RUNNING = "running"


@dataclass(frozen=True)
class AdaptPolicy:
    """The bounds and the damping of the scaling.

    ``tasks_per_process`` is the backlog (queued and running tasks) that
    justifies one worker process: 1 gives a process to every task.
    ``retire_busy`` retires jobs with tasks on them too (through the drain,
    which hands prefetched tasks back): what an explicit ``scale()`` down does.
    """

    minimum: int = 0
    maximum: int = 1
    processes_per_job: int = 1
    tasks_per_process: float = 1.0
    cooldown: float = 10.0
    idle_wait: float = 30.0
    retire_busy: bool = False

    def __post_init__(self) -> None:
        for name in ("minimum", "maximum", "processes_per_job"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigurationError(f"{name} must be a whole number >= 0, not {v!r}")
        if self.processes_per_job < 1:
            raise ConfigurationError("processes_per_job must be 1 or more")
        if self.maximum < self.minimum:
            raise ConfigurationError(
                f"maximum ({self.maximum}) must not be below minimum ({self.minimum})"
            )
        for name in ("tasks_per_process", "cooldown", "idle_wait"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ConfigurationError(f"{name} must be a finite number >= 0, not {v!r}")
        if self.tasks_per_process <= 0:
            raise ConfigurationError("tasks_per_process must be more than 0")


@dataclass(frozen=True)
class JobView:
    """One job as the policy sees it: pending or running, busy or idle."""

    id: str
    state: str  # PENDING or RUNNING
    busy: bool = False


@dataclass(frozen=True)
class Pool:
    """The backlog and the jobs that serve it (jobs already retiring left out)."""

    queued: int
    running: int
    jobs: tuple[JobView, ...] = ()

    @property
    def outstanding(self) -> int:
        return self.queued + self.running


@dataclass(frozen=True)
class Memory:
    """What :func:`decide` remembers between calls."""

    last_submit: float = -math.inf
    last_retire: float = -math.inf
    surplus_since: float | None = None


@dataclass(frozen=True)
class Decision:
    """``submit`` new jobs, ``retire`` these job ids; ``kind`` and ``reason`` for the log."""

    kind: str  # "submit", "retire", "hold" or "steady"
    reason: str
    submit: int = 0
    retire: tuple[str, ...] = ()
    want: int = 0
    have: int = 0


def wanted_jobs(policy: AdaptPolicy, pool: Pool) -> int:
    """Jobs the backlog justifies, within the bounds."""
    per_job = policy.processes_per_job * policy.tasks_per_process
    want = math.ceil(pool.outstanding / per_job) if pool.outstanding else 0
    return max(policy.minimum, min(policy.maximum, want))


def decide(policy: AdaptPolicy, pool: Pool, now: float, memory: Memory) -> tuple[Decision, Memory]:
    """The decision for this moment, and the memory for the next call."""
    decision, mem = _decide(policy, pool, now, memory)
    return replace(decision, want=wanted_jobs(policy, pool), have=len(pool.jobs)), mem


def _decide(policy: AdaptPolicy, pool: Pool, now: float, memory: Memory) -> tuple[Decision, Memory]:
    want = wanted_jobs(policy, pool)
    have = len(pool.jobs)
    n_pending = sum(1 for j in pool.jobs if j.state == PENDING)
    state = (
        f"backlog {pool.queued} queued + {pool.running} running wants {want} job(s) "
        f"(min {policy.minimum}, max {policy.maximum}); have {have} "
        f"({have - n_pending} running, {n_pending} pending)"
    )
    if want > have:
        mem = dataclasses.replace(memory, surplus_since=None)
        since = now - memory.last_retire
        if since < policy.cooldown:
            return Decision("hold", f"{state}: cool-down, {since:.0f} s since a retirement"), mem
        mem = dataclasses.replace(mem, last_submit=now)
        return Decision("submit", f"{state}: submit {want - have}", submit=want - have), mem
    if want == have:
        return Decision("steady", state), dataclasses.replace(memory, surplus_since=None)
    surplus_since = now if memory.surplus_since is None else memory.surplus_since
    mem = dataclasses.replace(memory, surplus_since=surplus_since)
    waited = now - surplus_since
    if waited < policy.idle_wait:
        why = f"surplus for {waited:.0f} s of {policy.idle_wait:g}"
        return Decision("hold", f"{state}: {why}"), mem
    since = now - memory.last_submit
    if since < policy.cooldown:
        return Decision("hold", f"{state}: cool-down, {since:.0f} s since a submission"), mem
    # Pending jobs first (newest first: they would start last), then idle ones.
    order = [j for j in reversed(pool.jobs) if j.state == PENDING]
    order += [j for j in reversed(pool.jobs) if j.state != PENDING and not j.busy]
    if policy.retire_busy:
        order += [j for j in reversed(pool.jobs) if j.state != PENDING and j.busy]
    retire = tuple(j.id for j in order[: have - want])
    if not retire:
        return Decision("hold", f"{state}: surplus, but every job is busy"), mem
    mem = dataclasses.replace(mem, last_retire=now, surplus_since=None)
    return Decision("retire", f"{state}: retire {', '.join(retire)}", retire=retire), mem
