"""zmqworkers: run work on local worker processes and daemons on other machines.

``Cluster`` is the plain-Python face (a ``concurrent.futures.Executor``).
``WorkerController`` and ``AppRunner`` are the Qt face and ``BaseApp`` the
base of the apps ``AppRunner`` runs; they are loaded on first use, so
``import zmqworkers`` never imports Qt (and ``BaseApp`` never needs it).
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from zmqworkers._version import __version__
from zmqworkers.errors import (
    ClusterShutdown,
    ConfigurationError,
    DecodeError,
    EngineClosed,
    ProtocolVersionError,
    RemoteError,
    TaskTimeout,
    WorkerLost,
    ZmqWorkersError,
)

_QT_NAMES = {"WorkerController", "AppRunner"}

if _TYPE_CHECKING:
    from zmqworkers.client.cluster import Cluster
    from zmqworkers.client.progress import progress
    from zmqworkers.controller.forkserver import warm_up

__all__ = [
    "AppRunner",
    "BaseApp",
    "Cluster",
    "ClusterShutdown",
    "ConfigurationError",
    "DecodeError",
    "EngineClosed",
    "ProtocolVersionError",
    "RemoteError",
    "TaskTimeout",
    "WorkerController",
    "WorkerLost",
    "ZmqWorkersError",
    "__version__",
    "progress",
    "warm_up",
]


def __getattr__(name: str) -> _Any:
    # Loaded on first use, so that a worker, which imports this package,
    # starts without loading the controller (or Qt).
    if name == "Cluster":
        from zmqworkers.client.cluster import Cluster

        return Cluster
    if name == "progress":
        from zmqworkers.client.progress import progress

        return progress
    if name == "warm_up":
        from zmqworkers.controller.forkserver import warm_up

        return warm_up
    if name == "BaseApp":
        from zmqworkers.client.apps import BaseApp

        return BaseApp
    if name in _QT_NAMES:
        from zmqworkers import qt

        return getattr(qt, name)
    raise AttributeError(f"module 'zmqworkers' has no attribute {name!r}")
