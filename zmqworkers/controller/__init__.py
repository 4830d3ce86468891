"""The controller: engine thread, scheduling, local workers and the faces.

The Qt face lives in :mod:`zmqworkers.qt` and is the only module that imports
qtpy.
"""

from zmqworkers.controller.engine import Engine, EngineOptions
from zmqworkers.controller.executor import Cluster

__all__ = ["Cluster", "Engine", "EngineOptions"]
