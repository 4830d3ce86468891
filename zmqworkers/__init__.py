"""zmqworkers: run work on local worker processes and daemons on other machines.

``Cluster`` is the plain-Python face (a ``concurrent.futures.Executor``).
``WorkerController``, ``AppRunner`` and ``BaseApp`` are the Qt face; they are
loaded on first use, so ``import zmqworkers`` never imports Qt.
"""

from typing import Any as _Any

from zmqworkers._version import __version__
from zmqworkers.controller.executor import Cluster
from zmqworkers.errors import (
    ClusterShutdown,
    ConfigurationError,
    DecodeError,
    ProtocolVersionError,
    RemoteError,
    WorkerLost,
    ZmqWorkersError,
)

_QT_NAMES = {"WorkerController", "AppRunner", "BaseApp"}

__all__ = [
    "Cluster",
    "ClusterShutdown",
    "ConfigurationError",
    "DecodeError",
    "ProtocolVersionError",
    "RemoteError",
    "WorkerLost",
    "ZmqWorkersError",
    "__version__",
]


def __getattr__(name: str) -> _Any:
    if name in _QT_NAMES:
        from zmqworkers import qt

        return getattr(qt, name)
    raise AttributeError(f"module 'zmqworkers' has no attribute {name!r}")
