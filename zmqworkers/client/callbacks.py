"""Done-callbacks of a ``Cluster``'s futures, run off the engine thread.

::

    engine thread                          callback thread (one per Cluster)
    on_results: fut.set_result(...)
      └─ the future is done at once
         (result() and wait() return)
      └─ each done-callback is queued ──▶  fn(fut), in the order queued

The engine completes futures itself: that is a state change and a notify,
no user code. A done-callback is user code, and may block: ``other.result()``,
a lock, I/O. Run on the engine thread, it stopped heartbeats and every
delivery behind it, so workers took the controller for dead, and a callback
waiting for another future of the same cluster waited for ever. Queued
instead, it runs on a thread of the cluster's, and the future it waits for
is completed by the engine when its result comes.

A callback called anywhere else runs at once, in that thread, as
``concurrent.futures`` documents: one added to a future already done, or run
by ``cancel()`` in the caller's thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

log = logging.getLogger(__name__)

Callback = Callable[["Future[Any]"], object]


class CallbackThread:
    """Runs the done-callbacks queued while the engine completes futures.

    Started on the first such callback, so a cluster whose futures have
    none never starts it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._queue: _Queue | None = None
        self._here = threading.local()

    def completing(self, on: bool) -> None:
        """Mark the calling thread as completing futures (True) or done with it."""
        self._here.completing = on

    def call(self, fn: Callback, fut: Future[Any]) -> None:
        """Run ``fn(fut)`` now, or queue it if this thread is completing futures."""
        if not getattr(self._here, "completing", False):
            fn(fut)
            return
        with self._lock:
            if self._queue is None:
                # Each thread has a queue of its own: one started after a
                # close never takes the end marker meant for the last one.
                self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(
                    target=_run, args=(self._queue,), name="zmqworkers-callbacks", daemon=True
                )
                self._thread.start()
            self._queue.put((fn, fut))

    def close(self, timeout: float | None) -> bool:
        """Let the queued callbacks run, then end the thread.

        Waits up to ``timeout`` seconds (None: not at all) and returns
        whether the thread has ended; never waits from the thread itself
        (a callback that shuts its cluster down).
        """
        with self._lock:
            thread, q = self._thread, self._queue
            self._thread = self._queue = None
        if thread is None or q is None:
            return True
        q.put(None)
        if thread is threading.current_thread():
            return True  # the callback closing it ends with its thread
        if timeout is not None:
            thread.join(timeout)
        return not thread.is_alive()


_Queue = queue.SimpleQueue[tuple[Callback, Future[Any]] | None]


def _run(q: _Queue) -> None:
    while True:
        item = q.get()
        if item is None:
            return
        fn, fut = item
        try:
            fn(fut)
        except BaseException:
            # As concurrent.futures does, but SystemExit too: this thread
            # serves every later callback, and must not end with one.
            log.exception("a done-callback of %r raised", fut)


class ClusterFuture(Future[Any]):
    """A ``Future`` whose done-callbacks never run on the engine thread.

    ``cancel()`` asks the engine first (``take_back``): a task still queued,
    or prefetched by a worker that has not started it, is taken back and
    never runs; one that runs is not cancelled, as ``concurrent.futures``
    has it (``Cluster.cancel(force=True)`` interrupts it).
    """

    def __init__(
        self,
        callbacks: CallbackThread,
        take_back: Callable[[], int] | None = None,
        task_id: int | None = None,
    ) -> None:
        super().__init__()
        self._callbacks = callbacks
        self._take_back = take_back
        self.task_id = task_id

    def cancel(self) -> bool:
        take_back = self._take_back
        if take_back is not None and not self.done() and not take_back():
            return False
        return super().cancel()

    def add_done_callback(self, fn: Callback) -> None:
        callbacks = self._callbacks
        super().add_done_callback(lambda fut: callbacks.call(fn, fut))
