"""The Qt face: ``WorkerController`` and ``AppRunner``, QThreads with the seed's signals.

The only package of zmqworkers that imports Qt (through qtpy).
"""

from zmqworkers.apps import BaseApp
from zmqworkers.qt.app_runner import AppRunner
from zmqworkers.qt.controller import WorkerController

__all__ = ["AppRunner", "BaseApp", "WorkerController"]
