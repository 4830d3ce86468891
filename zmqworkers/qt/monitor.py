"""``ClusterMonitor``: a widget that shows what a ``WorkerController`` is doing.

::

    controller's QThread                      GUI thread: ClusterMonitor
    sig_progress(float) ─────── queued ────▶  progress bar
    sig_workers_changed(list) ─ queued ────▶  worker table: rows come and go
    sig_finished() ──────────── queued ────▶  run time and average rate
                   QTimer, every refresh_interval s:
                   workers(), counters() ──▶  table cells, throughput, counts

Workers report their state and current task with each heartbeat (once a
second by default), so a timer at about that rate shows all there is to see;
the signals make joins, departures and progress show at once.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from qtpy import QtCore, QtGui, QtWidgets

from zmqworkers.client.info import format_usage
from zmqworkers.qt.controller import WorkerController

COLUMNS = (
    "worker",
    "host",
    "pid",
    "state",
    "current task",
    "in flight",
    "tasks done",
    "RSS",
    "CPU",
    "last heartbeat",
)
_TASK_COLUMN = 4
_NUMERIC = {2, 5, 6, 7, 8, 9}
# Rows of workers that left stay (greyed) so a departure can be seen; only
# this many, so a long-lived controller whose daemons come and go stays small.
MAX_GONE_ROWS = 20
_DEPARTED = ("left", "lost")
_Role = QtCore.Qt.ItemDataRole
_RIGHT_ALIGNED = QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter
_RIGHT = int(_RIGHT_ALIGNED)


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


class WorkerTableModel(QtCore.QAbstractTableModel):
    """One row per worker, in the order they joined; departed workers greyed."""

    def __init__(self, parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[dict[str, Any]] = []
        self._gone: set[str] = set()

    # -- the model ----------------------------------------------------------

    def rowCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(
        self,
        section: int,
        orientation: QtCore.Qt.Orientation,
        role: int = _Role.DisplayRole,
    ) -> Any:
        if role == _Role.DisplayRole and orientation == QtCore.Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def data(self, index: QtCore.QModelIndex, role: int = _Role.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self._rows[index.row()]
        gone = row["id"] in self._gone
        col = index.column()
        if role == _Role.DisplayRole:
            return self._text(row, col, gone)
        if role == _Role.ToolTipRole and col == _TASK_COLUMN and not gone:
            task = row.get("current_task")
            return None if task is None else repr(task)
        if role == _Role.ToolTipRole and gone:
            state = str(row.get("state", ""))
            return state if state.startswith(_DEPARTED) else "gone; its counts as last seen"
        if role == _Role.ForegroundRole and gone:
            return QtGui.QBrush(QtGui.QColor("gray"))
        if role == _Role.TextAlignmentRole and col in _NUMERIC:
            return _RIGHT
        return None

    @staticmethod
    def _text(row: dict[str, Any], col: int, gone: bool) -> str:
        if col == 0:
            return str(row["id"])
        if col == 1:
            return str(row.get("host", ""))
        if col == 2:
            return str(row.get("pid", ""))
        if col == 3:
            state = str(row.get("state", ""))
            if not gone:
                return state
            return state.split(":", 1)[0] if state.startswith(_DEPARTED) else "gone"
        if col == 4:
            task = row.get("current_task")
            return "" if gone or task is None else _short(task)
        if col == 5:
            return "" if gone else str(row.get("in_flight", 0))
        if col == 6:
            return str(row.get("tasks_done", 0))
        if col in (7, 8):
            key = "rss" if col == 7 else "cpu"
            return "" if gone else format_usage(key, row.get(key))
        seen = row.get("last_heartbeat")
        if not isinstance(seen, (int, float)):
            return ""
        # The snapshot holds time.monotonic() of this process: show its age.
        return f"{max(0.0, time.monotonic() - seen):.1f} s ago"

    # -- updates ------------------------------------------------------------

    def worker_ids(self, include_gone: bool = False) -> list[str]:
        return [r["id"] for r in self._rows if include_gone or r["id"] not in self._gone]

    @QtCore.Slot(object)
    def set_workers(self, snapshots: list[dict[str, Any]]) -> None:
        """Show these workers; rows of workers not among them turn into departed rows.

        Snapshots whose state is ``left`` or ``lost: ...`` (from
        ``workers(include_departed=True)``) are departed rows with their final counts.
        """
        departed = [s for s in snapshots if str(s.get("state", "")).startswith(_DEPARTED)]
        # Only the latest departures: older ones would be added and trimmed again each time.
        old = {id(s) for s in departed[: max(0, len(departed) - MAX_GONE_ROWS)]}
        current = {str(s["id"]): s for s in snapshots if "id" in s and id(s) not in old}
        known = {r["id"]: i for i, r in enumerate(self._rows)}
        for wid, snap in current.items():
            row = dict(snap, id=wid)
            if wid in known:
                self._rows[known[wid]] = row
            else:
                self.beginInsertRows(QtCore.QModelIndex(), len(self._rows), len(self._rows))
                self._rows.append(row)
                self.endInsertRows()
        self._gone = {
            r["id"]
            for r in self._rows
            if r["id"] not in current or str(r.get("state", "")).startswith(_DEPARTED)
        }
        self._trim_gone()
        if self._rows:
            last = self.index(len(self._rows) - 1, len(COLUMNS) - 1)
            self.dataChanged.emit(self.index(0, 0), last)

    def clear_gone(self) -> None:
        self._remove([i for i, r in enumerate(self._rows) if r["id"] in self._gone])

    def _trim_gone(self) -> None:
        gone = [i for i, r in enumerate(self._rows) if r["id"] in self._gone]
        self._remove(gone[: max(0, len(gone) - MAX_GONE_ROWS)])

    def _remove(self, indices: list[int]) -> None:
        for i in reversed(indices):
            self.beginRemoveRows(QtCore.QModelIndex(), i, i)
            self._gone.discard(self._rows.pop(i)["id"])
            self.endRemoveRows()


class ClusterMonitor(QtWidgets.QWidget):
    """Progress, throughput, counts and a table of workers of one controller.

    ``ClusterMonitor(controller)`` may be made before or after
    ``controller.start()``. It reads the controller from the GUI thread:
    signals arrive queued, and every ``refresh_interval`` seconds it asks for
    :meth:`~WorkerController.workers` and :meth:`~WorkerController.counters`
    (waiting at most ``query_timeout`` seconds, so a busy engine never
    freezes the window for longer). Throughput is measured over the last
    ``window`` seconds (``rate_window``).
    """

    def __init__(
        self,
        controller: WorkerController,
        parent: QtWidgets.QWidget | None = None,
        *,
        refresh_interval: float = 0.5,
        window: float = 5.0,
        query_timeout: float = 0.25,
    ) -> None:
        super().__init__(parent)
        if refresh_interval <= 0 or window <= 0 or query_timeout <= 0:
            raise ValueError("refresh_interval, window and query_timeout must be > 0 seconds")
        self.controller = controller
        self.rate_window = window
        self.query_timeout = query_timeout
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._started = time.monotonic()
        self._finished_at: float | None = None
        self._counts: dict[str, Any] = {}

        self.setWindowTitle("zmqworkers")
        self.status_label = QtWidgets.QLabel()
        self.progress_bar = QtWidgets.QProgressBar()
        self.progress_bar.setRange(0, 100)
        self.throughput_label = QtWidgets.QLabel()
        # Wide enough for the longest text, so the bar does not jump as it changes.
        metrics = self.throughput_label.fontMetrics()
        widest = metrics.horizontalAdvance("00000.0 tasks/s on average")
        self.throughput_label.setMinimumWidth(widest)
        self.throughput_label.setAlignment(_RIGHT_ALIGNED)  # type: ignore[arg-type]
        self.counts_label = QtWidgets.QLabel()
        self.counts_label.setWordWrap(True)
        self.model = WorkerTableModel(self)
        self.table = QtWidgets.QTableView()
        self.table.setModel(self.model)
        vertical, horizontal = self.table.verticalHeader(), self.table.horizontalHeader()
        if vertical is not None and horizontal is not None:
            vertical.setVisible(False)
            horizontal.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
            horizontal.setSectionResizeMode(_TASK_COLUMN, QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.NoSelection)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)

        top = QtWidgets.QHBoxLayout()
        top.addWidget(self.progress_bar, 1)
        top.addWidget(self.throughput_label)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.status_label)
        layout.addLayout(top)
        layout.addWidget(self.counts_label)
        layout.addWidget(self.table, 1)
        self.resize(840, 320)

        controller.sig_progress.connect(self.show_progress)
        controller.sig_workers_changed.connect(self.model.set_workers)
        controller.sig_finished.connect(self._on_finished)
        controller.started.connect(self._on_started)
        self._timer = QtCore.QTimer(self)
        self._timer.setInterval(max(1, int(refresh_interval * 1000)))
        self._timer.timeout.connect(self.refresh)
        self._timer.start()
        self.show_progress(controller.progress)
        self.refresh()

    # -- slots ---------------------------------------------------------------

    @QtCore.Slot(float)
    def show_progress(self, progress: float) -> None:
        if progress < 0:
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat("no tasks")
            return
        self.progress_bar.setFormat("%p %")
        # Rounded down: 100 % means every task is done, not nearly all.
        self.progress_bar.setValue(min(100, max(0, int(progress * 100))))

    @QtCore.Slot()
    def refresh(self) -> None:
        """Read workers and counts now (the timer calls this)."""
        try:
            workers = self.controller.workers(self.query_timeout, include_departed=True)
            counts = self.controller.counters(self.query_timeout)
        except TimeoutError:
            return  # the engine is busy: the next tick tries again
        self.model.set_workers(workers)
        self._counts = counts
        now = time.monotonic()
        if self._finished_at is None:
            self._samples.append((now, int(counts.get("done", 0))))
            while len(self._samples) > 2 and now - self._samples[0][0] > self.rate_window:
                self._samples.popleft()
        self.show_progress(self.controller.progress)
        self._show_counts(len(self.model.worker_ids()))

    @QtCore.Slot()
    def _on_started(self) -> None:
        self._samples.clear()
        self._started = time.monotonic()
        self._finished_at = None
        self.model.clear_gone()
        self.refresh()

    @QtCore.Slot()
    def _on_finished(self) -> None:
        self.refresh()
        self._finished_at = time.monotonic()
        self._show_counts(0)

    # -- text ----------------------------------------------------------------

    def throughput(self) -> float | None:
        """Tasks per second over the last ``window`` seconds (None until measured)."""
        if len(self._samples) < 2:
            return None
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 - t0 > 0.2 else None

    def _show_counts(self, n_workers: int) -> None:
        c = self._counts
        dropped = c.get("dropped") or {}
        n_dropped = sum(dropped.values())
        reasons = ", ".join(f"{why} {n}" for why, n in sorted(dropped.items()))
        self.counts_label.setText(
            f"done {c.get('done', 0)} · failed {c.get('failed', 0)} · "
            f"queued {c.get('queued', 0)} · running {c.get('running', 0)} · "
            f"sent again {c.get('redispatched', 0)} · "
            f"lost workers {c.get('workers_lost', 0)} · "
            f"dropped messages {n_dropped}" + (f" ({reasons})" if reasons else "")
        )
        if self._finished_at is not None:
            elapsed = max(1e-9, self._finished_at - self._started)
            done = int(c.get("done", 0))
            self.status_label.setText(f"finished: {done} tasks in {elapsed:.1f} s")
            self.throughput_label.setText(f"{done / elapsed:.1f} tasks/s on average")
            return
        where = self.controller.address or "not started"
        self.status_label.setText(f"controller at {where} · {n_workers} workers connected")
        rate = self.throughput()
        self.throughput_label.setText("– tasks/s" if rate is None else f"{rate:.1f} tasks/s")

    def closeEvent(self, event: QtGui.QCloseEvent | None) -> None:
        self._timer.stop()
        super().closeEvent(event)
