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
