"""ClusterMonitor on a running WorkerController; sig_workers_changed and counters().

Runs are held mid-way by tasks that wait for a gate file, so what the
monitor shows mid-run is checked in a known state, not raced.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("pytestqt", reason="needs pytest-qt")
pytest.importorskip("qtpy.QtWidgets", reason="needs a Qt binding with widgets")

from qtpy import QtCore, QtGui  # noqa: E402

from tests.qt import monitor_jobs  # noqa: E402
from tests.qt.spy import Spy  # noqa: E402
from zmqworkers.qt import ClusterMonitor, WorkerController  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
N_TASKS, FREE = 40, 10  # 10 of 40 done: the bar holds at 25 % until the gate opens


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Path]:
    """The file gated tasks wait for; opened at teardown, so workers stop at once."""
    path = tmp_path / "gate"
    yield path
    path.touch()


def cell(monitor: ClusterMonitor, row: int, column: str) -> str:
    from zmqworkers.qt.monitor import COLUMNS

    model = monitor.model
    index = model.index(row, COLUMNS.index(column))
    return str(model.data(index, QtCore.Qt.ItemDataRole.DisplayRole))


def column(monitor: ClusterMonitor, name: str) -> list[str]:
    return [cell(monitor, r, name) for r in range(monitor.model.rowCount())]


def test_monitor_mid_run_shows_a_row_per_worker_and_the_progress(
    qtbot, controllers, gate: Path, tmp_path: Path
) -> None:
    wc = WorkerController(2, monitor_jobs.gated, func_args=(str(gate), FREE))
    controllers.append(wc)
    monitor = ClusterMonitor(wc, refresh_interval=0.1)
    qtbot.addWidget(monitor)
    monitor.show()
    wc.add_tasks(range(N_TASKS))
    wc.finalize_tasks()
    wc.start()

    # Both workers hold gated tasks: each heartbeat (1 s) says busy.
    qtbot.waitUntil(
        lambda: column(monitor, "state") == ["busy", "busy"] and monitor.progress_bar.value() == 25,
        timeout=30_000,
    )
    # The bar moves with each signal, the table with the timer: read both now.
    monitor.refresh()
    workers = wc.workers()
    assert monitor.model.rowCount() == len(workers) == 2
    assert 0 < monitor.progress_bar.value() < 100
    assert sorted(column(monitor, "pid")) == sorted(str(w["pid"]) for w in workers)
    assert column(monitor, "host") == [socket.gethostname()] * 2
    # What each runs is a task object the caller added: a gated one.
    running = [int(t) for t in column(monitor, "current task")]
    assert all(FREE <= t < N_TASKS for t in running), running
    assert sum(int(n) for n in column(monitor, "tasks done")) == FREE
    assert all(text.endswith(" s ago") for text in column(monitor, "last heartbeat"))
    # Each heartbeat carries the worker's RSS and CPU.
    assert all(text.endswith(" MiB") for text in column(monitor, "RSS")), column(monitor, "RSS")
    assert all(text.endswith("%") for text in column(monitor, "CPU")), column(monitor, "CPU")
    assert "done 10 · failed 0" in monitor.counts_label.text()
    assert "2 workers connected" in monitor.status_label.text()
    assert monitor.throughput_label.text().endswith("tasks/s")

    png = tmp_path / "monitor.png"
    assert monitor.grab().save(str(png))
    image = QtGui.QImage(str(png))
    assert (image.width(), image.height()) == (monitor.width(), monitor.height())
    # Not a blank grab: the bar's chunk, text and grid give many colours.
    w, h = image.width(), image.height()
    colours = {image.pixel(x, y) for x in range(0, w, 3) for y in range(0, h, 3)}
    assert len(colours) > 10
    if os.environ.get("ZMQWORKERS_SAVE_SCREENSHOTS"):
        image.save(os.path.join(os.environ["ZMQWORKERS_SAVE_SCREENSHOTS"], "monitor_mid_run.png"))

    with qtbot.waitSignal(wc.sig_finished, timeout=30_000):
        gate.touch()
    qtbot.waitUntil(lambda: monitor.status_label.text().startswith("finished"), timeout=10_000)
    assert monitor.progress_bar.value() == 100
    assert f"finished: {N_TASKS} tasks" in monitor.status_label.text()
    # Their last snapshots: every task counted once, on the worker that ran it.
    qtbot.waitUntil(lambda: column(monitor, "state") == ["left", "left"], timeout=10_000)
    assert sum(int(n) for n in column(monitor, "tasks done")) == N_TASKS
    counts = wc.counters()
    assert (counts["done"], counts["failed"]) == (N_TASKS, 0)
    assert (counts["queued"], counts["running"]) == (0, 0)


def test_workers_changed_on_join_and_loss_and_counters_of_a_run(
    qtbot, controllers, gate: Path
) -> None:
    wc = WorkerController(2, monitor_jobs.gated, func_args=(str(gate), FREE, (3,)))
    controllers.append(wc)
    monitor = ClusterMonitor(wc, refresh_interval=0.2)
    qtbot.addWidget(monitor)
    changes = Spy(wc.sig_workers_changed)
    errors = Spy(wc.sig_error)
    results = Spy(wc.sig_results)
    wc.add_tasks(range(N_TASKS))
    wc.finalize_tasks()
    wc.start()

    qtbot.waitUntil(
        lambda: wc.progress * N_TASKS >= FREE and len(wc.workers()) == 2, timeout=30_000
    )
    # One signal per join; each carries the workers connected when it was sent.
    sizes = [len(args[0]) for args in changes]
    assert sizes[:2] in ([1, 2], [2, 2]), sizes
    pids = [w["pid"] for w in wc.workers()]
    qtbot.waitUntil(lambda: all(w["in_flight"] > 0 for w in wc.workers()), timeout=10_000)
    before = len(changes)
    os.kill(pids[0], signal.SIGKILL)  # a worker this test's controller started

    qtbot.waitUntil(
        lambda: any(pids[0] not in [w["pid"] for w in args[0]] for args in list(changes)[before:]),
        timeout=30_000,
    )
    qtbot.waitUntil(lambda: "lost" in column(monitor, "state"), timeout=10_000)
    gone = column(monitor, "state").index("lost")
    assert cell(monitor, gone, "pid") == str(pids[0])
    departed = [w for w in wc.workers(include_departed=True) if w["pid"] == pids[0]]
    assert len(departed) == 1 and departed[0]["state"].startswith("lost: ")
    counts = wc.counters()
    assert counts["workers_lost"] == 1
    assert counts["redispatched"] >= 1  # the gated tasks it held went to another worker
    assert counts["failed"] == 1  # task 3
    assert isinstance(counts["dropped"], dict)

    with qtbot.waitSignal(wc.sig_finished, timeout=60_000):
        gate.touch()
    assert len(results) == N_TASKS - 1 and len(errors) == 1
    assert sorted(r[0] for r in results) == [t for t in range(N_TASKS) if t != 3]
    final = wc.counters()
    assert (final["done"], final["failed"]) == (N_TASKS, 1)
    assert wc.workers() == []
    # Once the run is over its workers' last counts remain: every result counted once.
    everyone = wc.workers(include_departed=True)
    assert {w["state"].split(":")[0] for w in everyone} == {"left", "lost"}
    assert sum(w["tasks_done"] for w in everyone) == N_TASKS


def test_a_monitor_of_a_controller_not_started_shows_nothing_running(qtbot) -> None:
    wc = WorkerController(1)
    monitor = ClusterMonitor(wc)
    qtbot.addWidget(monitor)
    assert monitor.model.rowCount() == 0
    assert monitor.progress_bar.value() == 0 and monitor.progress_bar.format() == "no tasks"
    assert "not started" in monitor.status_label.text()
    assert wc.counters()["done"] == 0 and wc.workers() == []
    with pytest.raises(ValueError, match="refresh_interval"):
        ClusterMonitor(wc, refresh_interval=0)


def test_demo_gui_runs_headless_and_ends_by_itself(tmp_path: Path) -> None:
    png = tmp_path / "demo.png"
    env = dict(os.environ, PYTHONPATH=str(ROOT), QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run(
        [sys.executable, "-m", "zmqworkers", "demo", "--gui", "--workers", "2",
         "--tasks", "12", "--delay", "0.1", "--screenshot", str(png)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "done: 12 tasks" in proc.stdout and ", 0 errors" in proc.stdout
    image = QtGui.QImage(str(png))
    assert not image.isNull() and image.width() > 300 and image.height() > 150


def test_demo_gui_without_a_display_says_what_to_do(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for name in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", "zmqworkers", "demo", "--gui"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "QT_QPA_PLATFORM=offscreen" in proc.stderr


def test_the_table_keeps_only_the_latest_departed_workers_without_churn(qtbot) -> None:
    from zmqworkers.qt.monitor import MAX_GONE_ROWS, WorkerTableModel

    model = WorkerTableModel()
    inserted: list[object] = []
    model.rowsInserted.connect(lambda *args: inserted.append(args))
    departed = [{"id": f"d{i}", "state": "left", "tasks_done": i} for i in range(50)]
    snapshots = [*departed, {"id": "live", "state": "busy", "tasks_done": 1}]
    model.set_workers(snapshots)
    model.set_workers(snapshots)
    assert model.rowCount() == MAX_GONE_ROWS + 1
    assert len(inserted) == MAX_GONE_ROWS + 1  # the second update inserted nothing
    assert model.worker_ids() == ["live"]
    assert model.worker_ids(include_gone=True)[0] == f"d{50 - MAX_GONE_ROWS}"
    model.set_workers([])  # the live worker went without a last snapshot: "gone"
    assert model.worker_ids() == []
    state = model.index(model.rowCount() - 1, 3)
    assert model.data(state) == "gone"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--screenshot", "x.png"], "--screenshot needs --gui"),
        (["--gui", "--workers", "0"], "--workers and --tasks must be >= 1"),
    ],
)
def test_demo_refuses_bad_options(tmp_path: Path, argv: list[str], says: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run(
        [sys.executable, "-m", "zmqworkers", "demo", *argv],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and says in proc.stderr
    assert not (tmp_path / "x.png").exists()
