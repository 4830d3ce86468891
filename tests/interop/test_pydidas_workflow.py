"""pydidas's ExecuteWorkflowRunner and ``zmqworkers pydidas-workflow`` on local workers.

``install()`` puts zmqworkers' runner in the place of pydidas's AppRunner;
``process_scan()`` is pydidas's own, with its second connection of the
app's store to ``sig_results``. The real-plugin workflow must give the
numpy result on every run; the unittest_objects one the files and shapes
of pydidas's own runner tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import zmqworkers
from tests.conftest import wait_for, worker_processes
from tests.interop import workflow_fixtures as wf
from tests.qt.spy import Spy

ROOT = Path(__file__).resolve().parents[2]
N_WORKERS = 2


@pytest.fixture
def installed(qapp: object) -> Iterator[None]:
    import zmqworkers.pydidas as zp

    wf.register_dummy_plugins()
    zp.install(n_workers=N_WORKERS)
    try:
        yield
    finally:
        zp.uninstall()


def test_install_replaces_pydidas_apprunner_and_uninstall_restores_it(qapp: object) -> None:
    import pydidas.apps.execute_workflow_runner as ewr
    import pydidas.multiprocessing as pmp

    import zmqworkers.pydidas as zp

    original = pmp.AppRunner
    zp.install(n_workers=1)
    try:
        assert ewr.AppRunner is not original and pmp.AppRunner is ewr.AppRunner
        with pytest.raises(ValueError, match="bind="):
            zp.install(key="k" * 32)
    finally:
        zp.uninstall()
    assert ewr.AppRunner is original and pmp.AppRunner is original


def test_install_warms_a_fork_server_with_pydidas_for_local_workers(
    qapp: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zmqworkers.pydidas as zp
    from zmqworkers.controller import forkserver

    # A PYTHON* variable of its own: a server for this test, not one that an
    # earlier test's run left with pydidas already imported.
    monkeypatch.setenv("PYTHON_ZMQWORKERS_WARM_PROBE", "1")
    before = forkserver.server_pids()
    zp.install(n_workers=1, warm_up=False)
    zp.uninstall()
    assert forkserver.server_pids() == before  # asked not to: nothing started
    zp.install(n_workers=1)
    try:
        started = forkserver.server_pids() - before
        assert len(started) == 1
        (server,) = started
        # pydidas's apps load Qt: the server has them imported before any run.
        maps = Path(f"/proc/{server}/maps")
        assert wait_for(lambda: "QtCore" in maps.read_text(), 90)
    finally:
        zp.uninstall()


def test_real_workflow_equals_numpy_on_every_run(installed: None, tmp_path: Path) -> None:
    workflow = wf.real_workflow(tmp_path / "in")
    for run in range(3):
        outdir = tmp_path / f"out{run}"
        wf.process_scan(workflow, outdir)
        wf.check_outputs(outdir, workflow)


def test_unittest_objects_workflow_has_pydidas_files_and_shapes(
    installed: None, tmp_path: Path
) -> None:
    workflow = wf.dummy_workflow(tmp_path / "in")
    wf.process_scan(workflow, tmp_path / "out")
    wf.check_outputs(tmp_path / "out", workflow)


def test_a_third_store_connection_still_gives_the_numpy_data(
    installed: None, tmp_path: Path
) -> None:
    # A third connection on top of pydidas's two: still the right numbers,
    # because each result carries its data instead of naming a reused slot.
    from pydidas.apps import ExecuteWorkflowApp

    from zmqworkers.pydidas.workflow import WorkflowAppRunner

    workflow = wf.real_workflow(tmp_path / "in")
    calls: list[int] = []
    make = WorkflowAppRunner.__init__

    def init(self: WorkflowAppRunner, app: ExecuteWorkflowApp, *args: object, **kw: object) -> None:
        make(self, app, *args, **kw)  # type: ignore[arg-type]
        self.sig_results.connect(app.multiprocessing_store_results)
        self.sig_results.connect(lambda index, _frame: calls.append(int(index)))

    WorkflowAppRunner.__init__ = init  # type: ignore[method-assign]
    try:
        wf.process_scan(workflow, tmp_path / "out")
    finally:
        WorkflowAppRunner.__init__ = make  # type: ignore[method-assign]
    assert sorted(calls) == list(range(wf.N_FRAMES))
    wf.check_outputs(tmp_path / "out", workflow)


def command(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "zmqworkers", "pydidas-workflow", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def workflow_args(workflow: wf.Workflow, outdir: Path) -> list[str]:
    return [
        "--workflow",
        str(workflow.tree),
        "--scan",
        str(workflow.scan),
        "--diffraction-exp",
        str(workflow.exp),
        "--output-dir",
        str(outdir),
    ]


def test_command_on_local_workers_writes_pydidas_layout(tmp_path: Path) -> None:
    workflow = wf.real_workflow(tmp_path / "in")
    out = tmp_path / "out"
    done = command(*workflow_args(workflow, out), "--workers", str(N_WORKERS))
    assert done.returncode == 0, done.stderr
    assert f"{wf.N_FRAMES} scan points processed" in done.stderr
    wf.check_outputs(out, workflow)
    # A second run into the same folder needs --overwrite, and says so.
    again = command(*workflow_args(workflow, out), "--workers", "1")
    assert again.returncode == 2 and "--overwrite" in again.stderr
    again = command(*workflow_args(workflow, out), "--workers", "1", "--overwrite")
    assert again.returncode == 0, again.stderr
    wf.check_outputs(out, workflow)


def test_command_names_what_is_wrong(tmp_path: Path) -> None:
    workflow = wf.real_workflow(tmp_path / "in")
    args = workflow_args(workflow, tmp_path / "out")
    missing = [a if a != str(workflow.scan) else str(tmp_path / "nope.yml") for a in args]
    done = command(*missing)
    assert done.returncode == 2 and "--scan" in done.stderr and "nope.yml" in done.stderr
    done = command(*args, "--bind", "tcp://127.0.0.1:0")
    assert done.returncode == 2 and "key" in done.stderr
    done = command(*args, "--workers", "0")
    assert done.returncode == 2 and "--workers" in done.stderr
    assert not (tmp_path / "out").exists()


def _load_contexts(workflow: wf.Workflow) -> None:
    from pydidas.contexts import DiffractionExperimentContext, ScanContext
    from pydidas.workflow import WorkflowTree

    ScanContext().import_from_file(workflow.scan)
    DiffractionExperimentContext().import_from_file(workflow.exp)
    WorkflowTree().import_from_file(workflow.tree)


def _run_plain(qtbot, controllers, app: Any) -> Any:
    """pydidas's unchanged ``ExecuteWorkflowApp`` on the plain ``zmqworkers.AppRunner``."""
    import zmqworkers

    runner = zmqworkers.AppRunner(app, n_workers=N_WORKERS)
    controllers.append(runner)
    # As pydidas's ExecuteWorkflowRunner does, on top of the runner's own.
    runner.sig_results.connect(app.multiprocessing_store_results)
    runner.sig_message_from_worker.connect(app.received_signal_message)
    errors = Spy(runner.sig_error)
    with qtbot.waitSignal(runner.finished, timeout=120_000):
        runner.start()
    assert len(errors) == 0, [e for e in errors]
    return runner


def test_plain_app_runner_gives_a_workflow_app_the_numpy_data_on_every_run(
    qtbot, controllers, tmp_path: Path
) -> None:
    # Without install(): the plain AppRunner sees pydidas's ExecuteWorkflowApp
    # and takes the path where results travel as data. Through shared memory
    # (pydidas's store, connected twice as ExecuteWorkflowRunner does) points
    # held other points' data in most runs.
    from pydidas.apps import ExecuteWorkflowApp
    from pydidas.workflow import WorkflowResults

    workflow = wf.real_workflow(tmp_path / "in")
    _load_contexts(workflow)
    binned, sums = workflow.expected["node_01.nxs"], workflow.expected["node_02.nxs"]
    for run in range(3):
        app = ExecuteWorkflowApp()
        runner = _run_plain(qtbot, controllers, app)
        assert runner.error is None, runner.error
        # No shared memory was made: nothing to race on.
        assert not app._config["shared_memory"], app._config["shared_memory"]
        results = WorkflowResults()
        got = np.asarray(results.get_results(1))
        wrong = [i for i in range(wf.N_FRAMES) if not np.array_equal(got[i], binned[i])]
        assert not wrong, f"run {run}: scan points {wrong} hold wrong data"
        assert np.array_equal(np.asarray(results.get_results(2)), sums), f"run {run}: sums"
        app.deleteLater()


def test_a_scan_point_that_raises_ends_a_plain_app_runner_run(
    qtbot, controllers, tmp_path: Path
) -> None:
    from pydidas.apps import ExecuteWorkflowApp

    from zmqworkers.pydidas.wire import ScanPointFailed, run_failure

    workflow = wf.real_workflow(tmp_path / "in")
    wf.break_point(tmp_path / "in", 5)
    _load_contexts(workflow)
    app = ExecuteWorkflowApp()
    runner = zmqworkers.AppRunner(app, n_workers=N_WORKERS)
    controllers.append(runner)
    errors = Spy(runner.sig_error)
    final = Spy(runner.sig_final_app_state)
    with qtbot.waitSignal(runner.finished, timeout=120_000):
        runner.start()
    assert isinstance(runner.error, ScanPointFailed)
    assert runner.error.index == 5 and runner.error.remote.type_name == "PydidasConfigError"
    assert "scan point 5 failed: PydidasConfigError" in str(runner.error)
    assert run_failure(app) is runner.error, "the app handed over does not know its run failed"
    assert 5 in [e[0] for e in errors] and len(final) == 1
    app.deleteLater()


def test_process_scan_with_a_failing_point_raises_and_writes_nothing(
    installed: None, tmp_path: Path
) -> None:
    from zmqworkers.pydidas.wire import ScanPointFailed

    workflow = wf.real_workflow(tmp_path / "in")
    wf.break_point(tmp_path / "in", 5)
    out = tmp_path / "out"
    with pytest.raises(ScanPointFailed, match="scan point 5 failed: PydidasConfigError") as info:
        wf.process_scan(workflow, out)
    assert info.value.index == 5
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
    # The next run, with the frame repaired, writes the right data.
    np.save(tmp_path / "in" / "frames" / "frame_005.npy", wf.frame(5))
    wf.process_scan(workflow, out)
    wf.check_outputs(out, workflow)


def test_command_with_a_failing_point_exits_1_naming_it_and_writes_nothing(
    tmp_path: Path,
) -> None:
    workflow = wf.real_workflow(tmp_path / "in")
    wf.break_point(tmp_path / "in", 5)
    out = tmp_path / "out"
    done = command(*workflow_args(workflow, out), "--workers", str(N_WORKERS))
    assert done.returncode == 1, done.stderr
    assert "scan point 5 failed: PydidasConfigError" in done.stderr, done.stderr
    assert f"nothing written to {out}" in done.stderr
    assert "Traceback" in done.stderr, "the worker's traceback is not shown"
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())


def test_request_interruption_ends_a_workflow_run_and_leaves_no_worker(
    qtbot, installed: None, tmp_path: Path
) -> None:
    from pydidas.apps import ExecuteWorkflowApp

    from zmqworkers.pydidas.workflow import WorkflowAppRunner

    # Enough points that a run on warm workers is still going when its
    # first result comes; the interruption is asked for right then.
    n_frames = 400
    workflow = wf.real_workflow(tmp_path / "in", n_frames)
    _load_contexts(workflow)
    app = ExecuteWorkflowApp()
    runner = WorkflowAppRunner(app, n_workers=N_WORKERS)
    seen: list[int] = []
    workers_then: list[int] = []

    def on_result(index: int, _frame: object) -> None:
        seen.append(index)
        if len(seen) == 1:
            workers_then.append(len(worker_processes()))
            runner.requestInterruption()

    runner.sig_results.connect(on_result)
    final: list[object] = []
    runner.sig_final_app_state.connect(final.append)
    try:
        with qtbot.waitSignal(runner.finished, timeout=60_000):
            runner.start()
    finally:
        if runner.isRunning():
            runner.requestInterruption()
            runner.wait(30_000)
    assert workers_then == [N_WORKERS]
    assert runner.error is None
    assert len(final) == 1
    assert len(seen) < n_frames, "the run was not cut short"
    wait_for(lambda: not worker_processes(), timeout=15)
    app.deleteLater()


def test_importing_zmqworkers_and_its_command_line_imports_no_pydidas() -> None:
    code = (
        "import importlib, sys, zmqworkers, zmqworkers.pydidas, zmqworkers.pydidas.command\n"
        "importlib.import_module('zmqworkers.cli.main')._parser()\n"
        "print(sorted(m for m in sys.modules if m == 'pydidas' or m.startswith('pydidas.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_examples_of_docs_pydidas_md_run(tmp_path: Path) -> None:
    # Fenced as ``py``, not ``python``: the main suite's example test runs
    # without pydidas; here it is installed.
    import re

    text = (ROOT / "docs" / "pydidas.md").read_text()
    blocks = re.findall(r"```py\n(.*?)```", text, re.S)
    assert blocks
    for code in blocks:
        script = tmp_path / "example.py"
        script.write_text(code + "\nzmqworkers.pydidas.uninstall()\n")
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
