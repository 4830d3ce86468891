"""WorkerController: the seed's API on local workers and on worker daemons.

Signals are recorded with ``QSignalSpy`` and no event loop, as in the seed;
every wait is bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

pytest.importorskip("qtpy.QtTest", reason="needs a Qt binding")

from tests.conftest import wait_for  # noqa: E402
from tests.qt import jobs  # noqa: E402
from tests.qt.spy import Spy  # noqa: E402
from zmqworkers import RemoteError, WorkerController  # noqa: E402


def spy_pairs(spy: Spy) -> list[tuple[object, object]]:
    return sorted((a, b) for a, b in spy)


def seed_sequence(
    wc: WorkerController, after_start: Callable[[], object] = lambda: None
) -> list[list[tuple[object, object]]]:
    """The seed's restart example, bounded: three rounds, then finalize."""
    spy = Spy(wc.sig_results)
    finished = Spy(wc.sig_finished)
    wc.change_function(jobs.linear, 2, 5)
    wc.add_tasks(np.arange(10))
    wc.start()
    after_start()
    rounds = []
    wait_for(lambda: wc.progress >= 1, timeout=30)
    rounds.append(spy_pairs(spy))
    wc.add_tasks(np.arange(10, 20))
    wait_for(lambda: wc.progress >= 1, timeout=30)
    rounds.append(spy_pairs(spy))
    wc.suspend()
    wc.change_function(jobs.linear, -1, 0)
    wc.add_tasks(np.arange(20, 30))
    wc.restart()
    wait_for(lambda: wc.progress >= 1, timeout=30)
    rounds.append(spy_pairs(spy))
    assert wc.isRunning()
    wc.finalize_tasks()
    assert wc.wait(30_000), "the thread did not end after finalize_tasks"
    assert len(finished) == 1
    return rounds


EXPECTED = [
    [(i, 2 * i + 5) for i in range(10)],
    [(i, 2 * i + 5) for i in range(20)],
    [(i, 2 * i + 5) for i in range(20)] + [(i, -i) for i in range(20, 30)],
]


def test_two_local_workers_give_the_seed_results(controllers) -> None:
    wc = WorkerController(n_workers=2)
    controllers.append(wc)
    assert seed_sequence(wc) == EXPECTED


def test_two_worker_daemons_give_the_same_results(controllers, daemons, key) -> None:
    wc = WorkerController(n_workers=0, bind="tcp://127.0.0.1:0", key=key)
    controllers.append(wc)
    spy = Spy(wc.sig_results)
    wc.change_function(jobs.linear, 1, 0)
    wc.start()
    procs = daemons(wc.address, 2)
    wait_for(lambda: len(wc.workers()) == 2, timeout=30)
    pids = {w["pid"] for w in wc.workers()}
    assert pids == {p.pid for p in procs}
    assert not any(w["local"] for w in wc.workers())
    wc.add_tasks(range(4))
    wait_for(lambda: wc.progress >= 1, timeout=30)
    assert spy_pairs(spy) == [(i, i) for i in range(4)]
    wc.stop()
    assert wc.wait(30_000)
    # The seed's sequence on a fresh controller served by daemons only.
    wc2 = WorkerController(n_workers=0, bind="tcp://127.0.0.1:0", key=key)
    controllers.append(wc2)
    assert seed_sequence(wc2, lambda: daemons(wc2.address, 2)) == EXPECTED


def test_numpy_arrays_are_tasks_and_come_back_with_their_results(controllers) -> None:
    weights = np.array([1.0, 10.0, 100.0])
    wc = WorkerController(2, jobs.row_sum, func_args=(weights,))
    controllers.append(wc)
    spy = Spy(wc.sig_results)
    rows = np.arange(12.0).reshape(4, 3)
    wc.add_tasks(rows)  # four tasks, one per row
    wc.add_task(np.array([1.0, 1.0, 1.0]))
    wc.finalize_tasks()
    wc.start()
    assert wc.wait(30_000)
    got = {tuple(task): result for task, result in spy}
    expected = {tuple(r): float(r @ weights) for r in [*rows, np.ones(3)]}
    assert got == expected
    assert wc.progress == 1


def test_func_kwargs_given_to_the_constructor_are_honoured(controllers) -> None:
    wc = WorkerController(1, jobs.linear, func_args=(3,), func_kwargs={"offset": 100})
    controllers.append(wc)
    spy = Spy(wc.sig_results)
    wc.add_tasks([1, 2])
    wc.finalize_tasks()
    wc.start()
    assert wc.wait(30_000)
    assert spy_pairs(spy) == [(1, 103), (2, 106)]


def test_a_raising_task_is_an_error_signal_and_the_run_completes(controllers) -> None:
    wc = WorkerController(2, jobs.fail_on, func_args=(3,))
    controllers.append(wc)
    results = Spy(wc.sig_results)
    errors = Spy(wc.sig_error)
    progress = Spy(wc.sig_progress)
    wc.add_tasks(range(8))
    wc.finalize_tasks()
    wc.start()
    assert wc.wait(30_000), "a raising task hung the run"
    assert spy_pairs(results) == [(i, i) for i in range(8) if i != 3]
    assert len(errors) == 1
    task, err = errors[0]
    assert task == 3
    assert isinstance(err, RemoteError) and isinstance(err, ValueError)
    assert "task 3 is bad" in str(err)
    assert len(progress) == 8 and max(p[0] for p in progress) == 1.0


def test_progress_is_minus_one_without_tasks_then_done_over_target(controllers) -> None:
    wc = WorkerController(1)
    controllers.append(wc)
    assert wc.progress == -1
    wc.change_function(jobs.linear, 1)
    wc.add_tasks(range(4))
    assert wc.progress == 0
    wc.start()
    wait_for(lambda: wc.progress == 1, timeout=30)


def test_n_workers_must_be_an_integer() -> None:
    wc = WorkerController(3)
    assert wc.n_workers == 3
    wc.n_workers = 1
    assert wc.n_workers == 1
    for bad in (1.5, "2", None, -1):
        with pytest.raises(ValueError, match="number of workers"):
            wc.n_workers = bad  # type: ignore[assignment]
    with pytest.raises(ValueError, match="number of workers"):
        WorkerController(2.0)  # type: ignore[arg-type]


def test_tasks_without_a_function_are_refused_with_a_clear_error() -> None:
    wc = WorkerController(1)
    with pytest.raises(ValueError, match="change_function"):
        wc.add_tasks([1])


def test_suspend_holds_tasks_until_restart(controllers) -> None:
    wc = WorkerController(2, jobs.linear, func_args=(1,))
    controllers.append(wc)
    spy = Spy(wc.sig_results)
    wc.start()
    wait_for(lambda: len(wc.workers()) == 2, timeout=30)
    wc.suspend()
    wc.add_tasks(range(5))
    time.sleep(0.3)  # a window in which nothing may be handed out
    assert len(spy) == 0 and wc.progress == 0
    wc.restart()
    wait_for(lambda: wc.progress == 1, timeout=30)
    assert spy_pairs(spy) == [(i, i) for i in range(5)]


def test_stop_signal_lets_workers_leave_and_restart_brings_them_back(controllers) -> None:
    wc = WorkerController(2, jobs.linear, func_args=(1,))
    controllers.append(wc)
    spy = Spy(wc.sig_results)
    wc.add_tasks(range(3))
    wc.start()
    wait_for(lambda: wc.progress == 1, timeout=30)
    wc.send_stop_signal()
    wait_for(lambda: wc.workers() == [], timeout=30)
    assert wc.isRunning()
    wc.add_tasks(range(3, 6))
    wc.restart()
    wait_for(lambda: wc.progress == 1, timeout=30)
    assert spy_pairs(spy) == [(i, i) for i in range(6)]
    wait_for(lambda: len(wc.workers()) == 2, timeout=30)


def test_change_function_drops_tasks_not_yet_handed_out(controllers) -> None:
    wc = WorkerController(1, jobs.linear, func_args=(1,))
    controllers.append(wc)
    spy = Spy(wc.sig_results)
    wc.suspend()
    wc.add_tasks(range(5))
    wc.start()
    wc.change_function(jobs.linear, 10)
    assert wc.progress == -1  # the five queued tasks are gone
    wc.add_tasks([7])
    wc.restart()
    wait_for(lambda: wc.progress == 1, timeout=30)
    assert spy_pairs(spy) == [(7, 70)]


def test_stop_ends_the_thread_and_emits_finished(controllers) -> None:
    wc = WorkerController(1, jobs.linear, func_args=(1,))
    controllers.append(wc)
    finished = Spy(wc.sig_finished)
    thread_finished = Spy(wc.finished)
    wc.start()
    assert wc.is_alive()
    wc.stop()
    assert wc.wait(30_000)
    assert not wc.is_alive()
    assert len(finished) == 1 and len(thread_finished) == 1


def test_a_task_can_send_a_message_to_the_controller(controllers) -> None:
    wc = WorkerController(2, jobs.talk)
    controllers.append(wc)
    messages = Spy(wc.sig_message_from_worker)
    wc.add_tasks(range(4))
    wc.finalize_tasks()
    wc.start()
    assert wc.wait(30_000)
    assert sorted(m[0] for m in messages) == [f"hello from task {i}" for i in range(4)]


def test_a_finished_controller_can_be_started_again(controllers) -> None:
    wc = WorkerController(1, jobs.linear, func_args=(1,))
    controllers.append(wc)
    spy = Spy(wc.sig_results)
    finished = Spy(wc.sig_finished)
    wc.add_tasks(range(2))
    wc.finalize_tasks()
    wc.start()
    assert wc.wait(30_000)
    # A new run is not finalized by the last one's finalize_tasks(): tasks
    # added after start() are still done, then this run's finalize ends it.
    wc.start()
    wc.add_tasks(range(2, 4))
    wait_for(lambda: len(spy) == 4, timeout=30)
    assert wc.isRunning()
    wc.finalize_tasks()
    assert wc.wait(30_000)
    assert spy_pairs(spy) == [(i, i) for i in range(4)]
    assert len(finished) == 2 and wc.progress == 1


def test_binding_a_public_address_without_a_key_is_refused_at_start() -> None:
    from zmqworkers import ConfigurationError

    wc = WorkerController(0, bind="tcp://0.0.0.0:0")
    with pytest.raises(ConfigurationError, match="key"):
        wc.start()
    assert not wc.isRunning()


def test_a_task_that_kills_its_workers_fails_and_the_run_completes(controllers) -> None:
    from zmqworkers import WorkerLost

    wc = WorkerController(2, jobs.die_on, func_args=(4,))
    controllers.append(wc)
    results = Spy(wc.sig_results)
    errors = Spy(wc.sig_error)
    wc.add_tasks(range(8))
    wc.finalize_tasks()
    wc.start()
    assert wc.wait(60_000), "a task that kills workers hung the run"
    assert spy_pairs(results) == [(i, i) for i in range(8) if i != 4]
    assert len(errors) == 1
    task, err = errors[0]
    assert task == 4 and isinstance(err, WorkerLost) and "exited with code 3" in str(err)


def test_tasks_outstanding_when_the_engine_closes_each_get_an_error(controllers) -> None:
    from zmqworkers import ClusterShutdown

    wc = WorkerController(1, jobs.linear, func_args=(1,))
    controllers.append(wc)
    errors = Spy(wc.sig_error)
    finished = Spy(wc.sig_finished)
    wc.suspend()
    wc.add_tasks(range(3))
    wc.start()
    wc._driver._engine.shutdown()  # fault injection: the engine goes away under the thread
    assert wc.wait(30_000), "the thread did not notice the engine closing"
    assert sorted(task for task, _ in errors) == [0, 1, 2]
    assert all(isinstance(err, ClusterShutdown) for _, err in errors)
    assert len(finished) == 1 and wc.progress == 1


def test_a_slot_that_blocks_holds_only_the_controller_thread_not_the_engine() -> None:
    # A direct connection runs the slot on the controller's thread, which
    # only reads the events the engine queued: a slot that blocks for twice
    # the silence a worker tolerates (0.6 s) delays the signals, not the
    # heartbeats, and no worker leaves.
    from qtpy import QtCore

    wc = WorkerController(n_workers=1, heartbeat_interval=0.2, heartbeat_misses=3)
    got: list[object] = []

    def slot(task: object, result: object) -> None:
        if not got:
            time.sleep(1.2)  # the user's slow slot, not a wait for a condition
        got.append(result)

    wc.sig_results.connect(slot, QtCore.Qt.ConnectionType.DirectConnection)
    try:
        wc.change_function(jobs.linear, 2, 0)
        wc.add_tasks(range(20))
        wc.start()
        wait_for(lambda: len(got) == 20, timeout=30)
        assert sorted(got) == [2 * i for i in range(20)]  # type: ignore[type-var]
        assert wc.counters()["workers_lost"] == 0
        assert len(wc.workers()) == 1
    finally:
        wc.finalize_tasks()
        assert wc.wait(30_000)


def test_a_spy_connected_between_batches_gets_every_later_signal(controllers) -> None:
    # Signals nobody receives are skipped per batch: a spy connected after
    # a first run sees one sig_progress and one sig_results per later result.
    wc = WorkerController(n_workers=2)
    controllers.append(wc)
    first = Spy(wc.sig_results)
    wc.change_function(jobs.linear, 1, 0)
    wc.add_tasks(range(50))
    wc.start()
    wait_for(lambda: len(first) == 50, timeout=30)
    progress, results = Spy(wc.sig_progress), Spy(wc.sig_results)
    wc.add_tasks(range(50, 250))
    wait_for(lambda: len(results) == 200, timeout=30)
    wait_for(lambda: len(progress) == 200, timeout=30)
    assert sorted(r[0] for r in results) == list(range(50, 250))
    fractions = [p[0] for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_a_large_add_tasks_reports_each_task_once_and_progress_last(controllers) -> None:
    # add_tasks hands a large call to the engine in several commands, and
    # results come back while the rest still go out; progress counts every
    # task from the start, so it reaches 1 only once every sig_results is out
    # (the seed's examples poll progress, then read their spy).
    from zmqworkers.client.streams import SUBMIT_CHUNK

    n = 3 * SUBMIT_CHUNK + 7
    wc = WorkerController(n_workers=2)
    controllers.append(wc)
    results, progress = Spy(wc.sig_results), Spy(wc.sig_progress)
    wc.change_function(jobs.linear, 1, 0)
    wc.start()
    wc.add_tasks(range(n))
    counts_at_one = wait_for(lambda: wc.progress >= 1 and [len(results)], timeout=60)
    assert counts_at_one == [n]
    assert sorted(r[0] for r in results) == list(range(n))
    assert all(task == value for task, value in results)
    fractions = [p[0] for p in progress]
    assert len(fractions) == n and fractions == sorted(fractions) and fractions[-1] == 1.0
