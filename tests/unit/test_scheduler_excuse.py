"""Workers ended from outside (a batch job's end) never count against their tasks."""

from __future__ import annotations

import pytest

from zmqworkers.controller.scheduler import Scheduler, WorkerState


def test_a_worker_lost_after_its_job_was_excused_counts_no_attempt() -> None:
    s = Scheduler(max_attempts=1)
    s.add(0, "spec", None)
    s.join(WorkerState(id="zmqw7-0", capacity=1))
    s.assign()
    s.excuse("zmqw7-")
    # With max_attempts=1 an unexcused loss would fail the task at once.
    assert s.lose("zmqw7-0", "connection lost") == []
    assert s.tasks[0].attempts == 0 and not s.tasks[0].suspect
    assert list(s.pending) == [0] and s.attempts_excused == 1


def test_an_excuse_after_the_loss_takes_the_attempt_back() -> None:
    s = Scheduler(max_attempts=2)
    s.add(0, "spec", None)
    s.join(WorkerState(id="zmqw7-0", capacity=1))
    s.assign()
    assert s.lose("zmqw7-0", "connection lost") == []
    assert s.tasks[0].attempts == 1 and s.tasks[0].suspect
    assert s.excuse("zmqw7-") == 1
    assert s.tasks[0].attempts == 0 and not s.tasks[0].suspect
    # The next loss is the task's first attempt again, not its last.
    s.join(WorkerState(id="local-1", capacity=1))
    s.assign()
    assert s.lose("local-1", "killed by SIGSEGV") == []
    assert s.tasks[0].attempts == 1


def test_an_excuse_names_one_job_only() -> None:
    s = Scheduler(max_attempts=1)
    s.add(0, "spec", None)
    s.join(WorkerState(id="zmqw71-0", capacity=1))
    s.assign()
    s.excuse("zmqw7-")
    failed = s.lose("zmqw71-0", "killed by SIGKILL")
    assert [tid for tid, _ in failed] == [0]
    with pytest.raises(ValueError, match="every worker"):
        s.excuse("")


def test_an_excuse_keeps_a_result_that_never_arrived() -> None:
    # Reconcile's death is no job end's doing: the message was dropped.
    s = Scheduler(max_attempts=2)
    s.add(0, "spec", None)
    s.join(WorkerState(id="slurm7-0", capacity=1))
    s.assign()
    s.workers["slurm7-0"].in_flight[0] = 1  # sent in TASKS message 1
    back, failed = s.reconcile("slurm7-0", 1, [])
    assert back == [0] and failed == []
    assert s.excuse("slurm7-") == 0  # every worker of the job, and still kept
    assert s.tasks[0].attempts == 1 and s.tasks[0].suspect


def test_an_excuse_takes_back_only_the_losses_the_end_caused() -> None:
    # Slot 0 crashed while its job ran; the daemon's replacement (r1) and
    # slot 1 were taken by the job's end. Only the last two are excused.
    s = Scheduler(max_attempts=3)
    for tid in range(3):
        s.add(tid, "spec", None)
    for wid in ("slurm7-0", "slurm7-1"):
        s.join(WorkerState(id=wid, capacity=1))
    assigned = dict(s.assign())
    crashed = assigned["slurm7-0"][0]
    assert s.lose("slurm7-0", "connection lost") == []
    s.join(WorkerState(id="slurm7-0r1", capacity=1))
    assert dict(s.assign()) == {"slurm7-0r1": [crashed]}  # a suspect, alone
    taken = assigned["slurm7-1"][0]
    assert s.lose("slurm7-0r1", "connection lost") == []
    assert s.lose("slurm7-1", "connection lost") == []
    assert s.tasks[crashed].attempts == 2 and s.tasks[taken].attempts == 1
    assert s.excuse("slurm7-", lost=["slurm7-0r1", "slurm7-1"]) == 2
    assert s.tasks[crashed].attempts == 1
    assert s.tasks[crashed].deaths == [("slurm7-0", "connection lost")]
    assert s.tasks[taken].attempts == 0 and not s.tasks[taken].suspect


def test_a_task_that_kills_its_jobs_workers_fails_however_many_jobs_end() -> None:
    # Each job: the task kills the worker it runs on (a crash while the job
    # runs), then the job reaches its walltime with another worker, which
    # its end takes. The crashes still add up to max_attempts.
    s = Scheduler(max_attempts=2)
    s.add(0, "spec", None)
    failed: list[int] = []
    for job in range(5):
        victim, bystander = f"slurm{job}-0", f"slurm{job}-1"
        s.join(WorkerState(id=victim, capacity=1))
        s.assign()
        failed += [tid for tid, _ in s.lose(victim, "killed by SIGKILL")]
        if failed:
            break
        s.join(WorkerState(id=bystander, capacity=1))
        s.excuse(f"slurm{job}-", lost=[bystander])
        assert s.lose(bystander, "connection lost") == []
    assert failed == [0] and job == 1
