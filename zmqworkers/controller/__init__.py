"""The controller: the engine thread, scheduling and local worker processes.

The faces that drive it live in :mod:`zmqworkers.client` and :mod:`zmqworkers.qt`.
"""

from zmqworkers.controller.engine import Engine
from zmqworkers.controller.options import EngineOptions

__all__ = ["Engine", "EngineOptions"]
