"""How ``map`` and ``imap_unordered`` results find their way back, and how arguments go out.

::

    engine thread: Cluster.on_results ─▶ StreamTable.deliver ─▶ Stream (a queue per call)
                                                                   │
    caller's thread: map / imap_unordered iterate ◀───────────────┘
                     Feed reads the arguments as room frees (map with buffersize)

The engine thread only hands batches over; the caller's iterables are read
in the caller's thread.
"""

from __future__ import annotations

import bisect
import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# Arguments go to the engine this many to a command.
SUBMIT_CHUNK = 4096


class Feed:
    """Reads a ``map``'s arguments as room frees: at most ``size`` submitted, not yielded.

    Refills come in steps of half the buffer (at most ``SUBMIT_CHUNK``), so
    tiny tasks still go to the engine many to a command.
    """

    def __init__(self, args: Iterator[Any], size: int, submit: Callable[[list[Any]], range]):
        self._args = args
        self._size = size
        self._submit = submit
        self._step = max(1, min(SUBMIT_CHUNK, size // 2))
        self._submitted = 0
        self._exhausted = False

    def top_up(self, yielded: int) -> list[range]:
        """Submit what fits now that ``yielded`` results were taken; the new id ranges."""
        out: list[range] = []
        room = self._size - (self._submitted - yielded)
        if self._exhausted or room < self._step:
            return out
        while room > 0:
            chunk = list(itertools.islice(self._args, min(room, SUBMIT_CHUNK)))
            if not chunk:
                self._exhausted = True
                break
            out.append(self._submit(chunk))
            self._submitted += len(chunk)
            room -= len(chunk)
        return out


class Stream:
    """Results for one map or imap call, handed over a batch at a time."""

    __slots__ = ("_q", "blocks", "outstanding")

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[list[tuple[int, bool, Any]]] = queue.SimpleQueue()
        # Its blocks with results still to come, by first id.
        self.blocks: dict[int, Block] = {}
        self.outstanding = 0

    def put(self, items: list[tuple[int, bool, Any]]) -> None:
        self._q.put(items)

    def get(self, timeout: float | None) -> list[tuple[int, bool, Any]]:
        if timeout is not None and timeout <= 0:
            raise TimeoutError("map results did not arrive in time")
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("map results did not arrive in time") from None


class Block:
    """Task ids reserved together for one stream, and how many results are due."""

    __slots__ = ("ids", "stream", "left")

    def __init__(self, ids: range, stream: Stream) -> None:
        self.ids = ids
        self.stream = stream
        self.left = len(ids)


class StreamTable:
    """Which stream owns a task id, kept as id ranges, not one entry per task.

    Task ids are handed out in contiguous blocks, so a million queued tasks
    of a ``map`` cost a few ranges here instead of a million dict entries.
    A block is forgotten as soon as its last result is in, so a stream that
    runs for ever (``imap_unordered`` over an endless iterator) holds only
    the blocks of its window, not one per block it ever submitted.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._starts: list[int] = []
        self._by_start: dict[int, Block] = {}

    def new(self) -> Stream:
        return Stream()

    def add(self, ids: range, stream: Stream) -> None:
        if not ids:
            return
        block = Block(ids, stream)
        with self._lock:
            bisect.insort(self._starts, ids.start)
            self._by_start[ids.start] = block
            stream.blocks[ids.start] = block
            stream.outstanding += len(ids)

    def deliver(self, items: list[tuple[int, bool, Any]]) -> None:
        """Hand results to their streams: one put per stream per batch."""
        if not items:
            return
        groups: dict[Stream, list[tuple[int, bool, Any]]] = {}
        n = len(items)
        with self._lock:
            i = 0
            while i < n:
                tid = items[i][0]
                k = bisect.bisect_right(self._starts, tid) - 1
                hit = self._by_start[self._starts[k]] if k >= 0 else None
                if hit is None or tid not in hit.ids:
                    i += 1
                    continue  # its stream was abandoned
                # The run of results of this block: a batch is usually one run.
                ids = hit.ids
                j = i + 1
                while j < n and items[j][0] in ids:
                    j += 1
                groups.setdefault(hit.stream, []).extend(items[i:j])
                hit.left -= j - i
                if hit.left <= 0:
                    self._forget(hit)
                i = j
            for stream, got in groups.items():
                stream.outstanding -= len(got)
                if stream.outstanding <= 0:
                    self._drop(stream)
        for stream, got in groups.items():
            stream.put(got)

    def remove(self, stream: Stream) -> list[int]:
        """Forget the stream; return the ids of its blocks still open.

        A block still open may hold ids already delivered: cancelling those
        does nothing.
        """
        with self._lock:
            if stream.outstanding <= 0:
                return []
            left = [tid for b in stream.blocks.values() for tid in b.ids]
            self._drop(stream)
            return left

    def _forget(self, block: Block) -> None:
        start = block.ids.start
        if self._by_start.get(start) is block:
            del self._by_start[start]
            del self._starts[bisect.bisect_left(self._starts, start)]
        block.stream.blocks.pop(start, None)

    def _drop(self, stream: Stream) -> None:
        for block in list(stream.blocks.values()):
            self._forget(block)
        stream.outstanding = 0

    def idle(self) -> bool:
        with self._lock:
            return not self._starts


def chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
