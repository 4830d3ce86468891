"""``Spy``: a ``QSignalSpy`` read the same way under PyQt5 and PySide6.

PyQt's spy is a sequence; PySide6's offers ``count()`` and ``at(i)``. The
recording is QSignalSpy's own: a direct connection, no event loop needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from qtpy import QtTest


class Spy:
    def __init__(self, signal: Any) -> None:
        self.spy = QtTest.QSignalSpy(signal)

    def records(self) -> list[list[Any]]:
        if hasattr(self.spy, "at"):
            return [list(self.spy.at(i)) for i in range(self.spy.count())]
        return [list(r) for r in self.spy]

    def __len__(self) -> int:
        return len(self.records())

    def __getitem__(self, i: int) -> list[Any]:
        return self.records()[i]

    def __iter__(self) -> Iterator[list[Any]]:
        return iter(self.records())
