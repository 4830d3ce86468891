"""What pydidas's code expects of ``AppRunner`` and ``WorkerController``, on either binding.

The main suite runs these on PyQt5; tests/interop runs the same functions on
PySide6 beside real pydidas. The app is ``ProtocolApp``: pydidas's app
protocol without pydidas.
"""

from __future__ import annotations

import numpy as np
import psutil
import pytest

pytest.importorskip("qtpy.QtTest", reason="needs a Qt binding")

from tests.conftest import wait_for, worker_processes  # noqa: E402
from tests.qt.protocol_apps import Params, ProtocolApp, expected_composite  # noqa: E402
from tests.qt.spy import Spy  # noqa: E402
from zmqworkers import AppRunner, WorkerController  # noqa: E402


def _affine(task: int, slope: int, offset: int) -> int:
    return task * slope + offset


def test_the_given_app_is_prepared_and_gets_every_result_and_the_post_run(
    qtbot, controllers
) -> None:
    app = ProtocolApp()
    runner = AppRunner(app, n_workers=2)
    controllers.append(runner)
    assert app.pre_runs == 1, "run_prepared was false: the runner prepares the given app"
    final = Spy(runner.sig_final_app_state)
    messages = Spy(runner.sig_message_from_worker)
    progress = Spy(runner.sig_progress)
    with qtbot.waitSignal(runner.sig_post_run_called, timeout=60_000):
        runner.start()
    # Stores and the post-run reach the given app queued, on its thread, in order.
    qtbot.waitUntil(lambda: app.post_runs == 1, timeout=10_000)
    np.testing.assert_array_equal(app.composite, expected_composite())
    assert sorted(app.stored) == list(range(8))
    assert sorted(m[0] for m in messages) == [f"frame {i} signals" for i in (1, 3, 5, 7)]
    assert [p[0] for p in progress][-1] == 1.0 and runner.progress == 1.0
    assert len(final) == 1
    state = final[0][0]
    assert isinstance(state, ProtocolApp) and state is not app
    # The runner's copy is a clone: it saw every result but holds no composite.
    assert sorted(state.stored) == list(range(8)) and state.composite is None
    assert state.post_runs == 1 and state.pre_runs == 2


def test_a_prepared_app_is_not_prepared_again(qtbot, controllers) -> None:
    app = ProtocolApp(Params(n_frames=4, gain=3.0, delay=0.0))
    app.multiprocessing_pre_run()
    runner = AppRunner(app, n_workers=1)
    controllers.append(runner)
    assert app.pre_runs == 1
    with qtbot.waitSignal(runner.finished, timeout=60_000):
        runner.start()
    qtbot.waitUntil(lambda: app.post_runs == 1, timeout=10_000)
    np.testing.assert_array_equal(app.composite, expected_composite(4, 3.0))
    assert app.pre_runs == 1


def test_an_object_without_the_app_hooks_is_refused_with_what_it_lacks() -> None:
    class NotAnApp:
        params: dict[str, object] = {}

        def multiprocessing_func(self, index: int) -> int:
            return index

    with pytest.raises(TypeError, match="lacks: multiprocessing_pre_run, .*_config"):
        AppRunner(NotAnApp())


def test_request_interruption_drops_the_queue_stops_workers_and_still_finishes(
    qtbot, controllers
) -> None:
    app = ProtocolApp(Params(n_frames=200, gain=1.0, delay=0.05))
    runner = AppRunner(app, n_workers=2)
    controllers.append(runner)
    results = Spy(runner.sig_results)
    post_run = Spy(runner.sig_post_run_called)
    runner.start()
    wait_for(lambda: len(results) >= 4, timeout=30)
    workers = worker_processes()
    assert len(workers) == 2
    with qtbot.waitSignal(runner.finished, timeout=30_000):
        runner.requestInterruption()
    assert runner.wait_for_processes_to_finish(5)
    assert 4 <= len(results) < 200
    assert len(post_run) == 1
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"workers left behind: {alive}"


def test_worker_controller_methods_pydidas_calls(qtbot, controllers) -> None:
    wc = WorkerController(2, function=_affine, func_args=(2, 5))
    controllers.append(wc)
    assert wc.progress == -1
    for bad in (1.5, "2", None):
        with pytest.raises(ValueError, match="integer"):
            wc.n_workers = bad  # type: ignore[assignment]
    assert wc.n_workers == 2
    results = Spy(wc.sig_results)
    wc.add_tasks(list(range(6)))
    # pydidas's stop tasks end the run once the tasks before them are done.
    wc.add_tasks([None, None], are_stop_tasks=True)
    assert wc.wait_for_processes_to_finish(0.01), "not running: nothing to wait for"
    with qtbot.waitSignal(wc.finished, timeout=60_000):
        wc.start()
        assert not wc.wait_for_processes_to_finish(0.01) or len(results) == 6
    assert sorted((r[0], r[1]) for r in results) == [(i, 2 * i + 5) for i in range(6)]
    assert wc.progress == 1.0
    wc.exit()
    assert wc.wait(5_000)


def test_exit_ends_a_running_run(qtbot, controllers) -> None:
    wc = WorkerController(1, function=_affine, func_args=(1, 0))
    controllers.append(wc)
    wc.add_tasks(list(range(3)))  # not finalized: the run would wait for more
    wc.start()
    with qtbot.waitSignal(wc.finished, timeout=30_000):
        wc.exit()
    assert wc.wait_for_processes_to_finish(5)


def test_delete_later_after_finished_is_safe(qtbot) -> None:
    runner = AppRunner(ProtocolApp(Params(n_frames=2, gain=1.0, delay=0.0)), n_workers=1)
    with qtbot.waitSignal(runner.finished, timeout=60_000):
        runner.start()
    runner.exit()
    with qtbot.waitSignal(runner.destroyed, timeout=10_000):
        runner.deleteLater()
    # A new controller after the deleted one: the registry of running ones copes.
    wc = WorkerController(1, function=_affine, func_args=(1, 1))
    wc.add_tasks([1])
    wc.finalize_tasks()
    with qtbot.waitSignal(wc.finished, timeout=60_000):
        wc.start()
    assert wc.wait(5_000)
