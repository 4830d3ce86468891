"""The signals as a Qt application gets them: queued into a running event loop."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("pytestqt", reason="needs pytest-qt")
pytest.importorskip("qtpy.QtCore", reason="needs a Qt binding")

from tests.qt import jobs  # noqa: E402
from zmqworkers import AppRunner, RemoteError, WorkerController  # noqa: E402


def test_tests_run_offscreen() -> None:
    assert os.environ.get("QT_QPA_PLATFORM") == "offscreen"


def test_progress_results_and_finished_reach_the_event_loop(qtbot, controllers) -> None:
    wc = WorkerController(2, jobs.linear, func_args=(2, 5))
    controllers.append(wc)
    results: list[tuple[object, object]] = []
    progress: list[float] = []
    wc.sig_results.connect(lambda task, result: results.append((task, result)))
    wc.sig_progress.connect(progress.append)
    wc.add_tasks(range(10))
    wc.finalize_tasks()
    with qtbot.waitSignals([wc.sig_finished, wc.finished], timeout=30_000):
        wc.start()
    assert sorted(results) == [(i, 2 * i + 5) for i in range(10)]
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) == 10


def test_wait_for_one_progress_signal(qtbot, controllers) -> None:
    wc = WorkerController(1, jobs.linear, func_args=(1,))
    controllers.append(wc)
    wc.add_tasks(range(4))
    with qtbot.waitSignal(
        wc.sig_progress, timeout=30_000, check_params_cb=lambda p: p >= 1.0
    ) as blocker:
        wc.start()
    assert blocker.args == [1.0]


def test_first_result_signal_carries_task_and_result(qtbot, controllers) -> None:
    wc = WorkerController(1, jobs.linear, func_args=(3,), func_kwargs={"offset": 1})
    controllers.append(wc)
    wc.add_task(7)
    with qtbot.waitSignal(wc.sig_results, timeout=30_000) as blocker:
        wc.start()
    assert blocker.args == [7, 22]


def test_error_signal_carries_the_task_and_the_remote_error(qtbot, controllers) -> None:
    wc = WorkerController(2, jobs.fail_on, func_args=(2,))
    controllers.append(wc)
    wc.add_tasks(range(4))
    wc.finalize_tasks()
    with qtbot.waitSignal(wc.sig_error, timeout=30_000) as blocker:
        wc.start()
    task, err = blocker.args
    assert task == 2 and isinstance(err, RemoteError) and err.type_name == "ValueError"
    qtbot.waitUntil(lambda: not wc.isRunning(), timeout=30_000)
    assert wc.progress == 1


def test_app_runner_final_state_and_post_run_signals(qtbot, controllers) -> None:
    runner = AppRunner(jobs.CompositeApp(n_frames=4), n_workers=2)
    controllers.append(runner)
    states: list[object] = []
    runner.sig_final_app_state.connect(states.append)
    with qtbot.waitSignals(
        [runner.sig_final_app_state, runner.sig_post_run_called, runner.sig_finished],
        order="strict",
        timeout=30_000,
    ):
        runner.start()
    assert len(states) == 1 and states[0].post_run_calls == 1  # type: ignore[attr-defined]
