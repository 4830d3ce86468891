"""pydidas's own GUI frames, switched by ``install()``, driven as a user drives them.

Offscreen (QT_QPA_PLATFORM=offscreen): each frame is built as pydidas's
main window builds it when it is first shown, the fields are filled the
way typing and Enter fill them, and the buttons are clicked. The frames'
own code then makes the runner (ours), runs it and shows what it got.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import wait_for, worker_processes
from tests.interop import workflow_fixtures as wf

N_WORKERS = 2
RUN_MS = 120_000


@pytest.fixture
def installed(qapp: object) -> Iterator[None]:
    import zmqworkers.pydidas as zp

    zp.install(n_workers=N_WORKERS)
    try:
        yield
    finally:
        zp.uninstall()


def build(frame_class: type) -> Any:
    """The frame as the main window has it once shown: widgets built, signals connected."""
    frame = frame_class()
    frame.frame_index = 0
    frame.frame_activated(0)
    assert frame._config["built"]
    return frame


def enter(frame: Any, key: str, value: object) -> None:
    """Type ``value`` into the field of parameter ``key`` and press Enter."""
    widget = frame.param_widgets[key]
    widget.set_value(value)
    widget.emit_signal()


def click_and_wait(qtbot: Any, frame: Any, button: str = "but_exec") -> Any:
    """Click ``button``; return the runner the frame made, once the frame let it go."""
    frame._widgets[button].click()
    runner = frame._runner
    assert runner is not None, "the frame did not start a run"
    qtbot.waitUntil(lambda: frame._runner is None, timeout=RUN_MS)
    return runner


def test_composite_creator_frame_builds_the_composite_on_our_runner(
    qtbot: Any, installed: None, image_files: list[Path]
) -> None:
    from pydidas.gui.frames import CompositeCreatorFrame

    from zmqworkers.qt import AppRunner

    frame = build(CompositeCreatorFrame)
    try:
        enter(frame, "first_file", str(image_files[0]))
        enter(frame, "last_file", str(image_files[-1]))
        enter(frame, "composite_nx", "6")
        assert frame.get_param_value("composite_ny") == 4, "the frame did not take the files"
        assert frame._widgets["but_exec"].isEnabled()
        runner = click_and_wait(qtbot, frame)
        assert isinstance(runner, AppRunner)
        # The frame's own app holds the composite (the runner feeds it), and
        # it is the images in pydidas's layout: 4 rows of 6, in file order.
        images = np.stack([np.load(path) for path in image_files])
        direct = images.reshape(4, 6, 30, 40).transpose(0, 2, 1, 3).reshape(120, 240)
        assert np.array_equal(frame._app.composite, direct)
        assert frame._widgets["but_show"].isEnabled() and frame._widgets["but_exec"].isEnabled()
        wait_for(lambda: not worker_processes(), timeout=15)
    finally:
        frame.deleteLater()


def _load_contexts(workflow: wf.Workflow) -> None:
    from pydidas.contexts import DiffractionExperimentContext, ScanContext
    from pydidas.workflow import WorkflowTree

    ScanContext().import_from_file(workflow.scan)
    DiffractionExperimentContext().import_from_file(workflow.exp)
    WorkflowTree().import_from_file(workflow.tree)


def test_workflow_run_frame_processes_and_autosaves_on_our_runner(
    qtbot: Any, installed: None, tmp_path: Path
) -> None:
    from pydidas.gui.frames import WorkflowRunFrame
    from pydidas.workflow import WorkflowResults

    from zmqworkers.pydidas.workflow import WorkflowAppRunner

    workflow = wf.real_workflow(tmp_path / "in")
    _load_contexts(workflow)
    frame = build(WorkflowRunFrame)
    running: list[bool] = []
    frame.sig_processing_running.connect(running.append)
    try:
        autosave = tmp_path / "autosave"
        frame.set_param_and_widget_value("autosave_results", True)
        frame.set_param_and_widget_value("autosave_directory", str(autosave))
        runner = click_and_wait(qtbot, frame)
        assert isinstance(runner, WorkflowAppRunner)
        assert running == [True, False]
        results = WorkflowResults()
        for node, name in ((1, "node_01.nxs"), (2, "node_02.nxs")):
            assert np.array_equal(np.asarray(results.get_results(node)), workflow.expected[name])
        # The files pydidas wrote point by point while the run went on.
        wf.check_outputs(autosave, workflow)
        assert frame._widgets["but_exec"].isEnabled()
        wait_for(lambda: not worker_processes(), timeout=15)
    finally:
        frame.deleteLater()


def test_workflow_run_frame_abort_button_ends_the_run(
    qtbot: Any, installed: None, tmp_path: Path
) -> None:
    from pydidas.gui.frames import WorkflowRunFrame
    from pydidas.workflow import WorkflowResults

    workflow = wf.real_workflow(tmp_path / "in")
    _load_contexts(workflow)
    frame = build(WorkflowRunFrame)
    running: list[bool] = []
    frame.sig_processing_running.connect(running.append)
    try:
        frame._widgets["but_exec"].click()
        runner = frame._runner
        assert runner is not None
        # The frame's abort waits (at most 5 s, else it raises) for the
        # runner's finished; the workers are still starting now.
        frame._widgets["but_abort"].click()
        assert frame._runner is None
        assert not runner.isRunning()
        assert running == [True, False]
        assert _points_stored(WorkflowResults(), 1) < wf.N_FRAMES, "the run was not cut short"
        assert frame._widgets["but_exec"].isEnabled()
        wait_for(lambda: not worker_processes(), timeout=15)
    finally:
        frame.deleteLater()


def test_workflow_run_frame_with_a_failing_point_stops_and_says_so(
    qtbot: Any, installed: None, tmp_path: Path
) -> None:
    from pydidas.gui.frames import WorkflowRunFrame
    from pydidas_qtcore import PydidasQApplication

    workflow = wf.real_workflow(tmp_path / "in")
    wf.break_point(tmp_path / "in", 5)
    _load_contexts(workflow)
    frame = build(WorkflowRunFrame)
    statuses: list[str] = []
    PydidasQApplication.instance().sig_status_message.connect(statuses.append)
    try:
        runner = click_and_wait(qtbot, frame)
        assert runner.error is not None and runner.error.index == 5
        qtbot.waitUntil(
            lambda: any("scan point 5 failed: PydidasConfigError" in s for s in statuses),
            timeout=10_000,
        )
        assert frame._widgets["but_exec"].isEnabled()
        wait_for(lambda: not worker_processes(), timeout=15)
    finally:
        PydidasQApplication.instance().sig_status_message.disconnect(statuses.append)
        frame.deleteLater()


def _points_stored(results: Any, node: int) -> int:
    from pydidas.core import UserConfigError

    try:
        got = np.asarray(results.get_results(node))
    except UserConfigError:
        return 0  # not even the first point's metadata came
    return int(np.count_nonzero(~np.isnan(got).reshape(len(got), -1).any(axis=1)))


def test_directory_spy_frame_gets_pydidas_runner_for_its_shared_values(
    installed: None, tmp_path: Path
) -> None:
    # Its app shares multiprocessing.Value/Array objects with its worker,
    # which reach a child process only when it is started with them: the
    # switched frame's runner is pydidas's own for it. (Not started here:
    # pydidas's own runner gives this app no task to run.)
    import pydidas.gui.frames.directory_spy_frame as spy
    from pydidas.gui.frames import DirectorySpyFrame
    from pydidas.multiprocessing.app_runner import AppRunner

    np.save(tmp_path / "image_000.npy", np.ones((20, 30)))
    frame = build(DirectorySpyFrame)
    try:
        frame.set_param_and_widget_value("scan_for_all", True)
        frame.set_param_and_widget_value("directory_path", str(tmp_path))
        # What the frame's run does, up to making its runner.
        frame._app.multiprocessing_pre_run()
        runner = spy.AppRunner(frame._app, n_workers=1)
        assert type(runner) is AppRunner
        runner.deleteLater()
    finally:
        frame.deleteLater()
