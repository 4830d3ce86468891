"""``SlurmJobs``: worker daemons as Slurm jobs, submitted, scaled and retired by the controller.

::

    caller thread                      watch thread (one per SlurmJobs)
      scale() / adapt()  ── policy ──▶  every `interval` s:
      close()            ── stop ────▶    squeue/sacct: which jobs still live
                                          face.counters(), face.workers(): the backlog,
                                            which job's workers hold tasks
                                          policy.decide(): submit, retire or hold (one log line)
                                          sbatch / scancel --signal=TERM --batch

A job's workers are named ``slurm<job id>-<slot>`` (jobscript.py), so the
face's worker snapshots say which job each belongs to. A job retired here,
or ended in a way that is not its tasks' doing (``BLAMELESS_ENDS``:
walltime, preemption, node failure, scancel), is *excused* through the
face: its workers' tasks go back to the queue without counting an attempt
against the task. A job that FAILED or ran OUT_OF_MEMORY is not: its
losses count, so a task that kills its job fails after ``max_attempts``.
An excuse takes back only the losses the end caused: those of the workers
the face showed at the last look while the job still ran (a worker that
crashed before that, a result that never arrived, keep their attempt). The
face is read only through its public commands (``counters``, ``workers``,
``excuse_workers``), never its state.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from zmqworkers.errors import ConfigurationError, EngineClosed, SlurmError
from zmqworkers.scale.jobscript import WORKER_PREFIX, JobOptions, job_script
from zmqworkers.scale.policy import PENDING, RUNNING, AdaptPolicy, JobView, Memory, Pool, decide
from zmqworkers.scale.slurm_commands import (
    ALIVE_STATES,
    BLAMELESS_ENDS,
    PENDING_STATES,
    SlurmCommands,
)

log = logging.getLogger(__name__)


class Face(Protocol):
    """What SlurmJobs needs of a Cluster or WorkerController."""

    def counters(self) -> dict[str, Any]: ...

    def workers(self) -> list[dict[str, Any]]: ...

    def excuse_workers(self, prefix: str, *, lost: Iterable[str] | None = None) -> int: ...


@dataclass
class JobRecord:
    """One submitted job, as this controller knows it."""

    id: str
    state: str = "PENDING"
    retiring: bool = False
    ended: bool = False  # holds no resources any more (COMPLETING too)
    settled: bool = False  # its final state is known, and excused or not
    # Its workers the face showed at the last look while the job still ran:
    # those its end may take.
    seen: frozenset[str] = frozenset()


def prefix_of(job_id: str) -> str:
    """The worker id prefix of a job's workers."""
    return f"{WORKER_PREFIX}{job_id}-"


class SlurmJobs:
    """Worker daemons as Slurm jobs, one ``zmqworkers worker`` daemon per job.

    ``face`` is a ``Cluster`` or ``WorkerController`` (or ``None``: jobs
    only, as ``zmqworkers slurm`` runs them) that wrote ``connection_file``
    on a directory the compute nodes share. The job options are those of
    :class:`~zmqworkers.scale.jobscript.JobOptions`. Nothing is submitted
    until :meth:`scale` or :meth:`adapt`; :meth:`close` (also when the
    face is shut down, or this process exits) cancels every job submitted.
    """

    def __init__(
        self,
        face: Face | None,
        connection_file: str | os.PathLike[str],
        *,
        interval: float = 2.0,
        command_timeout: float = 30.0,
        commands: SlurmCommands | None = None,
        **job_options: Any,
    ) -> None:
        try:
            self.options = JobOptions(**job_options)
        except TypeError as exc:
            raise ConfigurationError(f"SlurmJobs: {exc}") from exc
        path = os.path.abspath(os.fspath(connection_file))
        if not os.path.isdir(os.path.dirname(path)):
            # The face writes the file when it starts (a WorkerController
            # only at start()), and the daemons wait for it: the folder must be there.
            raise ConfigurationError(
                f"connection file {path}: no folder {os.path.dirname(path)}; give a path on "
                "a directory the compute nodes share, as the face's connection_file="
            )
        if not interval > 0:
            raise ConfigurationError(f"interval must be more than 0 seconds, not {interval!r}")
        self.face = face
        self.connection_file = path
        self.interval = interval
        self.commands = commands or SlurmCommands(timeout=command_timeout)
        self.records: dict[str, JobRecord] = {}
        self.excused = 0
        self._policy: AdaptPolicy | None = None
        self._memory = Memory()
        self._last_logged: tuple[object, ...] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        atexit.register(self._cancel_all)

    # -- the public side (any thread) --------------------------------------

    def job_script(self) -> str:
        """The batch script, exactly as sbatch gets it (it holds no key)."""
        return job_script(self.options, self.connection_file)

    def scale(self, jobs: int | None = None, *, processes: int | None = None) -> None:
        """Keep ``jobs`` jobs (or enough for ``processes`` processes); replace any that end."""
        if (jobs is None) == (processes is None):
            raise ConfigurationError("scale() takes jobs=N or processes=N")
        if processes is not None:
            if not isinstance(processes, int) or processes < 0:
                raise ConfigurationError(
                    f"processes must be a whole number >= 0, not {processes!r}"
                )
            jobs = -(-processes // self.options.processes)
        assert jobs is not None
        self._set_policy(
            AdaptPolicy(
                minimum=jobs,
                maximum=jobs,
                processes_per_job=self.options.processes,
                cooldown=0,
                idle_wait=0,
                retire_busy=True,
            )
        )

    def adapt(
        self,
        minimum: int = 0,
        maximum: int = 1,
        *,
        tasks_per_process: float = 1.0,
        cooldown: float = 10.0,
        idle_wait: float = 30.0,
    ) -> None:
        """Between ``minimum`` and ``maximum`` jobs, following the face's backlog.

        See :mod:`zmqworkers.scale.policy` for the hysteresis (``idle_wait``)
        and the ``cooldown``.
        """
        if self.face is None:
            raise ConfigurationError("adapt() needs a face (a Cluster or WorkerController)")
        self._set_policy(
            AdaptPolicy(
                minimum=minimum,
                maximum=maximum,
                processes_per_job=self.options.processes,
                tasks_per_process=tasks_per_process,
                cooldown=cooldown,
                idle_wait=idle_wait,
            )
        )

    def jobs(self) -> dict[str, str]:
        """The jobs that still hold or wait for resources, and their Slurm states."""
        with self._lock:
            return {j.id: j.state for j in self.records.values() if not j.ended}

    @property
    def submitted(self) -> list[str]:
        """Every job id submitted, oldest first."""
        with self._lock:
            return list(self.records)

    def close(self, timeout: float = 30.0) -> None:
        """Stop scaling and cancel every job submitted, pending ones too."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._cancel_all()

    def __enter__(self) -> SlurmJobs:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the watch thread ---------------------------------------------------

    def _set_policy(self, policy: AdaptPolicy) -> None:
        if self._closed:
            raise ConfigurationError("these SlurmJobs are closed")
        with self._lock:
            self._policy = policy
            self._memory = replace(self._memory, surplus_since=None)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="zmqworkers-slurm", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.tick():
                    log.info("slurm-jobs event=face_closed: cancelling every job")
                    self._cancel_all()
                    return
            except SlurmError as exc:
                log.warning("slurm-jobs event=slurm_error %s", exc)
            except Exception:  # noqa: BLE001 - the watch must go on
                log.exception("slurm-jobs event=error")
            self._wake.wait(self.interval)
            self._wake.clear()

    def tick(self, now: float | None = None) -> bool:
        """One round: states, backlog, decision, action. False once the face has closed."""
        now = time.monotonic() if now is None else now
        self._update_states()
        counters, workers = self._read_face()
        if counters is None:
            return False
        with self._lock:
            policy, memory = self._policy, self._memory
            for j in self.records.values():
                if not j.ended:
                    j.seen = _workers_of(workers, prefix_of(j.id))
            live = [j for j in self.records.values() if not j.ended and not j.retiring]
        if policy is None:
            return True
        busy = {prefix_of(j.id) for j in live if _holds_tasks(workers, prefix_of(j.id))}
        pool = Pool(
            queued=int(counters.get("queued", 0)),
            running=int(counters.get("running", 0)),
            jobs=tuple(
                JobView(
                    j.id,
                    PENDING if j.state in PENDING_STATES else RUNNING,
                    busy=prefix_of(j.id) in busy,
                )
                for j in live
            ),
        )
        decision, memory = decide(policy, pool, now, memory)
        with self._lock:
            self._memory = memory
        # One line per decision that changes something, or per change of
        # what is held and why: not one per tick while nothing changes.
        why = re.sub(r"[\d.]+", "", decision.reason.rpartition(":")[2])
        key = (decision.kind, decision.want, decision.have, why)
        if decision.kind in ("submit", "retire") or key != self._last_logged:
            log.info("slurm-jobs decision=%s %s", decision.kind, decision.reason)
            self._last_logged = key
        for _ in range(decision.submit):
            self._submit()
        if decision.retire:
            self._retire(decision.retire)
        return True

    def _read_face(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        if self.face is None:
            return {}, []
        try:
            counters = self.face.counters()
            workers = self.face.workers()
        except EngineClosed:
            return None, []
        # A closed face still answers with its last counts, without a queue.
        return (counters if "queued" in counters else None), workers

    def _submit(self) -> None:
        job_id = self.commands.submit(self.job_script())
        with self._lock:
            self.records[job_id] = JobRecord(job_id)
            closed = self._closed
        log.info("slurm-jobs event=submitted job=%s", job_id)
        if closed:
            # close() gave up waiting for this round and cancelled the
            # others: this one must not outlive it.
            self.commands.cancel([job_id])
            log.info("slurm-jobs event=cancelled jobs=%s", job_id)

    def _retire(self, job_ids: tuple[str, ...]) -> None:
        with self._lock:
            records = [self.records[j] for j in job_ids]
            for r in records:
                r.retiring = True
        # A drain asked for: the losses to come are not the tasks' doing,
        # those recorded before are not the drain's.
        self._excuse([(r.id, ()) for r in records])
        pending = [r.id for r in records if r.state in PENDING_STATES]
        running = [r.id for r in records if r.state not in PENDING_STATES]
        # A pending job holds nothing yet: cancelled outright. A running
        # one drains: each process finishes its call, hands back the rest.
        self.commands.cancel(pending)
        self.commands.cancel(running, signal="TERM")
        for j in job_ids:
            log.info(
                "slurm-jobs event=retiring job=%s how=%s", j, "cancel" if j in pending else "drain"
            )

    def _update_states(self) -> None:
        with self._lock:
            watched = [j.id for j in self.records.values() if not j.settled]
        if not watched:
            return
        states = self.commands.states(watched)
        ended: list[JobRecord] = []
        with self._lock:
            for job_id, state in states.items():
                r = self.records[job_id]
                r.state = state
                if state == "COMPLETING":
                    # Holds nothing for the policy now; how it ended is
                    # known once it has completed.
                    r.ended = True
                elif state not in ALIVE_STATES:
                    r.ended = r.settled = True
                    ended.append(r)
        excused: list[tuple[str, Iterable[str]]] = []
        for r in ended:
            blameless = r.state in BLAMELESS_ENDS
            if blameless:
                excused.append((r.id, r.seen))
            if r.retiring or self._stop.is_set():
                why = ""
            elif blameless:
                why = " early: its tasks go back without blame"
            else:
                why = " early, not excused: its workers' losses count against their tasks"
            log.info("slurm-jobs event=ended job=%s state=%s%s", r.id, r.state, why)
        self._excuse(excused)

    def _excuse(self, jobs: list[tuple[str, Iterable[str]]]) -> None:
        """Excuse each job's workers; of the losses recorded, those of ``lost`` only."""
        if self.face is None:
            return
        for j, lost in jobs:
            try:
                self.excused += self.face.excuse_workers(prefix_of(j), lost=tuple(lost))
            except (EngineClosed, TimeoutError):
                return

    def _cancel_all(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            alive = [j.id for j in self.records.values() if not j.ended]
        atexit.unregister(self._cancel_all)
        if not alive:
            return
        self._excuse([(j, ()) for j in alive])
        try:
            self.commands.cancel(alive)
            log.info("slurm-jobs event=cancelled jobs=%s", ",".join(alive))
        except SlurmError as exc:
            log.error("slurm-jobs event=cancel_failed jobs=%s: %s", ",".join(alive), exc)


def _workers_of(workers: list[dict[str, Any]], prefix: str) -> frozenset[str]:
    return frozenset(w["id"] for w in workers if str(w.get("id", "")).startswith(prefix))


def _holds_tasks(workers: list[dict[str, Any]], prefix: str) -> bool:
    return any(
        str(w.get("id", "")).startswith(prefix) and (w.get("in_flight") or 0) > 0 for w in workers
    )
