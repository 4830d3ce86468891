"""The worker program. Importing this package never loads Qt.

``Worker`` and ``WorkerOptions`` load on first use, so code inside a task
(``zmqworkers.worker.current``) reaches its worker without importing the loop.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

if _TYPE_CHECKING:
    from zmqworkers.worker.loop import Worker, WorkerOptions

__all__ = ["Worker", "WorkerOptions"]


def __getattr__(name: str) -> _Any:
    if name in __all__:
        from zmqworkers.worker import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'zmqworkers.worker' has no attribute {name!r}")
