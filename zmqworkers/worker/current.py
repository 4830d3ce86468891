"""The worker serving in this process, for code running inside a task.

Imports nothing of the worker, so the apps API (and user code) can reach it
without importing the worker's loop.
"""

from __future__ import annotations

from typing import Protocol


class _Serving(Protocol):
    def send_message(self, text: str) -> bool: ...


# Set by the worker's loop while it serves; None outside a worker.
serving: _Serving | None = None


def send_message(text: str) -> bool:
    """Send ``text`` to the controller from inside a running task.

    The controller reports it as the event ``"message"`` (the Qt face emits
    ``sig_message_from_worker``). Returns False when not called from a task
    running on a worker, so code can run serially too.
    """
    worker = serving
    if worker is None:
        return False
    return worker.send_message(text)
