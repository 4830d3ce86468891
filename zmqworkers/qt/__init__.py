"""The Qt face: ``WorkerController`` and ``AppRunner``, QThreads with the seed's signals,
and ``ClusterMonitor``, a widget that shows one of them at work.

The only package of zmqworkers that imports Qt (through qtpy). The monitor
is loaded on first use: controllers need QtCore only, never QtWidgets.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from zmqworkers.client.apps import BaseApp
from zmqworkers.qt.app_runner import AppRunner
from zmqworkers.qt.controller import WorkerController

if _TYPE_CHECKING:
    from zmqworkers.qt.monitor import ClusterMonitor

__all__ = ["AppRunner", "BaseApp", "ClusterMonitor", "WorkerController"]


def __getattr__(name: str) -> _Any:
    if name == "ClusterMonitor":
        from zmqworkers.qt.monitor import ClusterMonitor

        return ClusterMonitor
    raise AttributeError(f"module 'zmqworkers.qt' has no attribute {name!r}")
