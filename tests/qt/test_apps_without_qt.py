"""Workers import apps: ``BaseApp`` and the app calling convention never load Qt."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.qt import jobs
from zmqworkers.client.apps import AppProcessor, BaseApp, run_app_task, send_message
from zmqworkers.worker.loop import make_call


def test_base_app_and_the_app_convention_do_not_load_qt() -> None:
    code = (
        "import sys, zmqworkers\n"
        "from zmqworkers import BaseApp\n"
        "import zmqworkers.client.apps, zmqworkers.worker.loop\n"
        "from tests.qt import jobs\n"
        "call = zmqworkers.worker.loop.make_call(('app', jobs.CompositeApp, "
        "({'n_frames': 2, 'frame_shape': (2, 2), 'columns': 2, 'gain': 1.0}, "
        "{'offset': 0.0}), {'use_tasks': True}))\n"
        "call(1)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt5', 'PySide6'))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_worker_side_of_an_app_runs_a_task_as_a_serial_run_does() -> None:
    app = jobs.CompositeApp(n_frames=3, gain=2.0)
    app.multiprocessing_pre_run()
    call = make_call(("app", jobs.CompositeApp, (app.params, app.get_config()), {}))
    assert isinstance(call, AppProcessor)
    expected = run_app_task(app, 2)
    assert (call(2) == expected).all()
    assert call.app().clone_mode and not hasattr(call.app(), "composite")


def test_a_failing_pre_run_fails_each_task_with_a_clear_error() -> None:
    class Broken(BaseApp):
        def multiprocessing_pre_run(self) -> None:
            raise OSError("calibration file missing")

    call = AppProcessor(Broken, {}, {})
    with pytest.raises(OSError, match="calibration file missing"):
        call(0)
    with pytest.raises(RuntimeError, match="could not be set up.*calibration file missing"):
        call(1)


def test_send_message_outside_a_worker_sends_nothing() -> None:
    assert send_message("nobody listens") is False
