"""A session's standby thread: started before its job is known, ended either way."""

from __future__ import annotations

import threading

import pytest

from zmqworkers.worker.standby import standby


def test_a_thread_that_never_gets_a_job_ends_on_join() -> None:
    thread = standby("t-idle")
    assert thread.is_alive()
    thread.join(timeout=10)
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="told to go"):
        thread.begin(lambda: None)  # too late: nothing would run it


def test_a_job_runs_once_and_join_wakes_it_first() -> None:
    stop = threading.Event()
    ran: list[str] = []

    def job() -> None:
        ran.append(threading.current_thread().name)
        stop.wait(30)  # a loop that sleeps until woken

    thread = standby("t-job")
    thread.begin(job, wake=stop.set)
    with pytest.raises(RuntimeError, match="handed already"):
        thread.begin(job)
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert ran == ["t-job"]
