"""A job shown in a ``ClusterMonitor`` window until it ends (``zmqworkers demo --gui``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from qtpy import QtCore, QtWidgets

from zmqworkers.qt.controller import WorkerController
from zmqworkers.qt.monitor import ClusterMonitor


class ShownJob(QtCore.QObject):
    """Collects one job's results on the GUI thread and closes the window after it."""

    def __init__(
        self,
        app: QtCore.QCoreApplication,
        controller: WorkerController,
        monitor: ClusterMonitor,
        n_tasks: int,
        screenshot: str | None,
        linger: float,
    ) -> None:
        super().__init__()
        self.app, self.controller, self.monitor = app, controller, monitor
        self.n_tasks, self.screenshot, self.linger = n_tasks, screenshot, linger
        self.results: dict[Any, Any] = {}
        self.errors: dict[Any, Any] = {}
        self.saved = False
        self.timed_out = False
        self.bound = QtCore.QTimer(self)
        self.bound.setSingleShot(True)
        self.bound.timeout.connect(self.on_timeout)
        controller.sig_results.connect(self.on_result)
        controller.sig_error.connect(self.on_error)
        controller.sig_finished.connect(self.on_finished)

    @QtCore.Slot(object, object)
    def on_result(self, task: Any, result: Any) -> None:
        self.results[task] = result
        self._save_at_half()

    @QtCore.Slot(object, object)
    def on_error(self, task: Any, error: Any) -> None:
        self.errors[task] = error
        self._save_at_half()

    def _save_at_half(self) -> None:
        done = len(self.results) + len(self.errors)
        if self.screenshot and not self.saved and 2 * done >= self.n_tasks:
            self.monitor.refresh()
            self.saved = bool(self.monitor.grab().save(self.screenshot))

    @QtCore.Slot()
    def on_finished(self) -> None:
        self.bound.stop()
        # The final state stays in view a moment before the window closes.
        QtCore.QTimer.singleShot(int(self.linger * 1000), self.app.quit)

    @QtCore.Slot()
    def on_timeout(self) -> None:
        self.timed_out = True
        self.controller.stop()
        self.app.quit()


def show_job(
    func: Callable[..., Any],
    tasks: Iterable[Any],
    args: tuple[Any, ...] = (),
    *,
    n_workers: int = 2,
    title: str = "zmqworkers",
    screenshot: str | None = None,
    linger: float = 1.5,
    bound: float = 600.0,
) -> ShownJob:
    """Run ``func(task, *args)`` over ``tasks`` with a monitor window; return when it closed.

    The window closes ``linger`` seconds after the job ends; after ``bound``
    seconds the job is stopped (``timed_out`` says so).
    """
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["zmqworkers"])
    items = list(tasks)
    controller = WorkerController(n_workers, func, func_args=args)
    monitor = ClusterMonitor(controller)
    monitor.setWindowTitle(title)
    job = ShownJob(app, controller, monitor, len(items), screenshot, linger)
    job.bound.start(int(bound * 1000))
    controller.add_tasks(items)
    controller.finalize_tasks()
    controller.start()
    monitor.show()
    app.exec_()
    controller.wait(30_000)
    monitor.close()
    return job
