"""The queue of tasks waiting for a worker, by priority. Pure code, for the scheduler."""

from __future__ import annotations

import bisect
import collections
from collections.abc import Iterable, Iterator


class PendingQueue:
    """Queued task ids by priority: the highest level first, in order within one.

    Only levels that hold ids are kept, highest last in ``_order``, so the
    next id is found in O(1) however many levels were ever used.
    """

    def __init__(self) -> None:
        self._levels: dict[int, collections.deque[int]] = {}
        self._order: list[int] = []  # ascending: the top level is the last

    def _level(self, priority: int) -> collections.deque[int]:
        q = self._levels.get(priority)
        if q is None:
            q = self._levels[priority] = collections.deque()
            bisect.insort(self._order, priority)
        return q

    def append(self, task_id: int, priority: int = 0) -> None:
        self._level(priority).append(task_id)

    def extend(self, task_ids: Iterable[int], priority: int = 0) -> None:
        self._level(priority).extend(task_ids)

    def put_front(self, task_ids: list[int], priority: int = 0) -> None:
        """Put ``task_ids`` at the front of their level, in their order."""
        if task_ids:
            self._level(priority).extendleft(reversed(task_ids))

    def top(self) -> collections.deque[int] | None:
        """The highest level's ids (not empty), or None; empty levels are dropped."""
        while self._order:
            q = self._levels[self._order[-1]]
            if q:
                return q
            del self._levels[self._order.pop()]
        return None

    def popleft(self) -> int:
        q = self.top()
        if q is None:
            raise IndexError("no queued task")
        return q.popleft()

    def clear(self) -> None:
        self._levels.clear()
        self._order.clear()

    def __iter__(self) -> Iterator[int]:
        for priority in reversed(self._order):
            yield from self._levels[priority]

    def __len__(self) -> int:
        return sum(len(q) for q in self._levels.values())

    def __bool__(self) -> bool:
        return self.top() is not None
