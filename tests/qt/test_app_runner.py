"""AppRunner: an app's state travels to every worker, results come back into its copy."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("qtpy.QtTest", reason="needs a Qt binding")

from tests.conftest import wait_for  # noqa: E402
from tests.qt import jobs  # noqa: E402
from tests.qt.spy import Spy  # noqa: E402
from zmqworkers import AppRunner, BaseApp, RemoteError  # noqa: E402


def serial_composite(**params: object) -> np.ndarray:
    app = jobs.CompositeApp(params)
    app.run()
    assert app.post_run_calls == 1
    return app.composite


@pytest.mark.parametrize("where", ["local", "daemons"])
def test_app_runner_builds_the_same_composite_as_a_serial_run(
    where: str, controllers, daemons, key
) -> None:
    app = jobs.CompositeApp(n_frames=10, gain=1.0)
    if where == "local":
        runner = AppRunner(app, n_workers=2)
    else:
        runner = AppRunner(app, n_workers=0, bind="tcp://127.0.0.1:0", key=key)
    controllers.append(runner)
    runner.set_app_param("gain", 2.5)  # on the runner's copy: workers get it too
    final = Spy(runner.sig_final_app_state)
    post_run = Spy(runner.sig_post_run_called)
    results = Spy(runner.sig_results)
    errors = Spy(runner.sig_error)
    runner.start()
    if where == "daemons":
        daemons(runner.address, 2)
    assert runner.wait(60_000), "the app run did not end"
    assert len(errors) == 0, [e for e in errors]
    assert sorted(r[0] for r in results) == list(range(10))
    assert len(final) == 1 and len(post_run) == 1
    expected = serial_composite(n_frames=10, gain=2.5)
    final_app = final[0][0]
    assert isinstance(final_app, jobs.CompositeApp)
    assert final_app.post_run_calls == 1
    np.testing.assert_array_equal(final_app.composite, expected)
    np.testing.assert_array_equal(runner.get_app().composite, expected)
    assert not hasattr(app, "composite")  # the caller's app is left alone
    assert runner.progress == 1


def test_app_signal_reaches_sig_message_from_worker(controllers) -> None:
    runner = AppRunner(jobs.SignallingApp(n_frames=6), n_workers=2)
    controllers.append(runner)
    messages = Spy(runner.sig_message_from_worker)
    final = Spy(runner.sig_final_app_state)
    runner.start()
    assert runner.wait(60_000)
    assert sorted(m[0] for m in messages) == sorted(f"frame {i} done" for i in range(6))
    np.testing.assert_array_equal(final[0][0].composite, serial_composite(n_frames=6))


def test_a_raising_app_func_is_an_error_signal_and_the_run_completes(controllers) -> None:
    runner = AppRunner(jobs.FailingApp(n_frames=8), n_workers=2)
    controllers.append(runner)
    errors = Spy(runner.sig_error)
    post_run = Spy(runner.sig_post_run_called)
    runner.start()
    assert runner.wait(60_000), "a raising app function hung the run"
    assert len(errors) == 1
    task, err = errors[0]
    assert task == 5 and isinstance(err, RemoteError) and "frame 5 cannot be read" in str(err)
    assert len(post_run) == 1
    composite = runner.get_app().composite
    h, w = 24, 32
    assert np.all(composite[h : 2 * h, w : 2 * w] == 0)  # frame 5: row 1, column 1
    assert np.count_nonzero(composite[:h, :w])  # frame 0 is there


def test_app_without_tasks_runs_while_it_carries_on_until_stopped(controllers) -> None:
    runner = AppRunner(jobs.CountdownApp(per_worker=3), n_workers=2, use_app_tasks=False)
    controllers.append(runner)
    results = Spy(runner.sig_results)
    final = Spy(runner.sig_final_app_state)
    runner.start()
    wait_for(lambda: len(results) >= 6, timeout=30)
    assert runner.progress == -1
    runner.stop()
    assert runner.wait(30_000)
    stored = final[0][0].stored
    assert len(stored) == 6 and all(result == -1 for _, result in stored)
    # Each worker's own copy of the app counted down 3, 2, 1: two workers, three each.
    workers = {index.split("-")[0] for index, _ in stored}
    assert len(workers) == 2
    assert sorted(index.split("-")[1] for index, _ in stored) == ["0", "0", "1", "1", "2", "2"]


def test_app_methods_and_params_on_the_runners_copy(controllers) -> None:
    runner = AppRunner(jobs.CompositeApp(n_frames=2), n_workers=1)
    controllers.append(runner)
    assert runner.call_app_method("get_param_value", "n_frames") == 2
    runner.set_app_param("n_frames", 3)
    assert runner.get_app().get_param_value("n_frames") == 3
    with pytest.raises(KeyError, match="no method 'nope'"):
        runner.call_app_method("nope")
    with pytest.raises(KeyError, match="no parameter 'size'"):
        runner.set_app_param("size", 1)
    with pytest.raises(TypeError, match="BaseApp"):
        AppRunner(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="function= does not apply"):
        AppRunner(jobs.CompositeApp(), function=abs)
    runner.start()
    with pytest.raises(RuntimeError, match="while the app runs"):
        runner.call_app_method("multiprocessing_post_run")
    assert runner.wait(30_000)
    assert runner.call_app_method("get_param_value", "n_frames") == 3


def test_base_app_copies_params_and_config() -> None:
    app = jobs.CompositeApp(n_frames=4)
    app.multiprocessing_pre_run()
    clone = app.copy(clone_mode=True)
    assert clone.clone_mode and not app.clone_mode
    clone.set_param_value("n_frames", 9)
    clone.composite[0, 0] = 1.0
    assert app.get_param_value("n_frames") == 4 and app.composite[0, 0] == 0
    config = app.get_config()
    config["offset"] = -1
    assert app.get_config()["offset"] == 1.0
    assert isinstance(clone, BaseApp)


def test_a_failing_controller_pre_run_is_an_error_signal_and_the_thread_ends(
    controllers,
) -> None:
    runner = AppRunner(jobs.UnpreparedApp(n_frames=2), n_workers=1)
    controllers.append(runner)
    errors = Spy(runner.sig_error)
    post_run = Spy(runner.sig_post_run_called)
    finished = Spy(runner.sig_finished)
    runner.start()
    assert runner.wait(30_000)
    assert len(errors) == 1 and errors[0][0] is None
    assert isinstance(errors[0][1], FileNotFoundError)
    assert len(post_run) == 0 and len(finished) == 1
