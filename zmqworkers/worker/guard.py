"""A worker's guard thread: ends the process on the controller's word, or over its memory.

::

    controller PUB ──INTERRUPT──▶ SUB ── guard thread (own socket, own context-free loop)
                                          │ the worker it names is this one:
                                          └─ exit EXIT_INTERRUPTED (the call is abandoned)
                                          │ naming tasks cancelled with force:
                                          └─ never started; one running: goodbye, exit
    every GUARD_SECONDS, during a call:   resident memory over max_memory * margin:
                                          └─ goodbye naming why, exit EXIT_MEMORY

The guard wakes every GUARD_SECONDS only while there is something to watch
(a memory limit, or a task cancelled with force that the main thread has
claimed and not yet checked); otherwise it sleeps until a broadcast arrives
or its session ends. Awake for nothing, 128 worker processes on one host
made 2,560 thread wake-ups a second between them, each taking the GIL from
a busy main thread.

A task cancelled with force needs no periodic look once the order is read:
the main thread claims a task (``_current``) before it checks ``doomed``
and commits to it (``_state`` busy) after, while the guard adds to
``doomed`` before it reads ``_current``. So a task whose check came before
the order is current when the guard looks, and one claimed but not yet
committed is either dropped by its check or committed within a few
instructions: only that moment is looked at again.

The main thread is in the user's call and reads no socket until it returns,
so a call that must stop now (cancelled with force, or past its timeout) is
ended by replacing the process: whoever started it (the controller's
launcher, or a daemon's supervisor) sees the exit status and starts another.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import sys
import threading
from typing import Any, Protocol

import zmq

from zmqworkers.errors import DecodeError
from zmqworkers.protocol import Kind, ReplayGuard, SessionKey, decode
from zmqworkers.protocol.records import Bye, Cancel, Interrupt, Welcome
from zmqworkers.protocol.session import DRAIN_CHANNEL, session_tag
from zmqworkers.security.curve import ClientKeys
from zmqworkers.worker import links
from zmqworkers.worker.calls import result_messages
from zmqworkers.worker.group import kill_rest_of_group
from zmqworkers.worker.handshake import side_endpoint
from zmqworkers.worker.options import (
    EXIT_INTERRUPTED,
    EXIT_MEMORY,
    MEMORY_MARGIN,
    WorkerOptions,
    format_size,
)
from zmqworkers.worker.standby import GUARD_THREAD, StandbyThread, standby
from zmqworkers.worker.usage import rss_bytes

log = logging.getLogger(__name__)

GUARD_SECONDS = 0.05

# Fault injection for tests: how many INTERRUPT orders for this worker its
# guard takes for missed (a broadcast reaches no subscriber not yet
# connected, and PUB drops what it cannot deliver). Read once per process.
_MISSED = {"left": int(os.environ.get("ZMQWORKERS_TEST_MISS_INTERRUPTS") or 0)}


def memory_exceeded(limit: int) -> str:
    return f"exceeded the memory limit of {format_size(limit)}"


class TaskMarks:
    """What the worker's main thread and its guard share about the tasks it holds.

    - ``watched``: tasks of TASKS messages marked ``watch`` (one of them has
      a timeout). Results held back for a batch are sent before each of
      them starts, so the first task the controller sees held is the one
      running, and its clock starts no earlier than the call.
    - ``doomed``: tasks cancelled with force (the guard adds them). Never
      started; one that runs already ends the process. Kept for the
      session: a repeated order would add a dropped one again.
    - ``held``: results done and not yet sent, which the guard sends
      itself when it ends the process, so their tasks do not run again.
    """

    def __init__(self) -> None:
        self.watched: set[int] = set()
        self.doomed: set[int] = set()
        self.held: list[tuple[int, bool, Any]] = []

    def watch(self, header: dict[str, Any], queued: list[Any] | None) -> None:
        if queued and header.get("watch") is True:
            self.watched.update(t[0] for t in queued)

    def flush_first(self, task_id: int) -> bool:
        """Whether held results go out before this task starts (it is watched)."""
        if task_id in self.watched:
            self.watched.discard(task_id)
            return True
        return False


class Guarded(Protocol):
    """The worker state the guard reads."""

    id: str
    address: str
    options: WorkerOptions
    _pub_key: bytes
    _current: int | None
    _state: str
    _limit: int
    marks: TaskMarks
    _queue: collections.deque[tuple[int, str, Any, bool]]
    _results_ep: str | None
    _result_sender: str
    _skey: bytes | SessionKey
    _curve: ClientKeys | None


def guard_loop(
    worker: Guarded,
    sock: zmq.Socket[Any],
    endpoint: str,
    pub_key: bytes,
    guard: ReplayGuard,
    stop: threading.Event,
    wake: int,
) -> None:
    """Serve one session: until ``stop`` is set, or the process ends here.

    ``wake``: a file descriptor that turns readable when ``stop`` is set.
    """
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
    links.redial_quickly(sock)
    sock.connect(endpoint)
    limit = worker.options.max_memory
    session = session_tag(worker._result_sender)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(wake, zmq.POLLIN)  # readable once the session ends
    every = int(GUARD_SECONDS * 1000)
    doomed = worker.marks.doomed
    claimed = False  # a doomed task is current, not yet committed or dropped
    while not stop.is_set():
        # Before, any order for tasks cancelled with force kept this loop
        # looking every GUARD_SECONDS for the rest of the session.
        timeout = every if limit is not None or claimed else None
        ready = dict(poller.poll(timeout))
        if wake in ready:
            break  # the session ended
        if sock in ready:
            try:
                msg = decode(sock.recv_multipart(copy=False), pub_key, max_size=1 << 20)
                guard.check(msg.sender, msg.seq)
                if msg.kind == Kind.INTERRUPT:
                    order = Interrupt.parse(msg.header)
                    ours = order.worker == worker.id and order.session in ("", session)
                    if ours and _MISSED["left"] > 0:
                        _MISSED["left"] -= 1  # fault injection (tests): missed
                        continue
                    if ours and order.cancel:
                        doomed.update(order.cancel)  # before _current is read
                    elif ours:
                        _end(worker, EXIT_INTERRUPTED, "interrupted by the controller")
            except Exception:  # noqa: BLE001 - anything unreadable is the main thread's to count
                continue
        current = worker._current
        claimed = current is not None and current in doomed
        # Busy, read after _current, and still that task: committed to it
        # (the main thread may have dropped it and started another since).
        if claimed and worker._state == "busy" and worker._current == current:
            # Cancelled with force while the controller took it for
            # prefetched: it has started here. The goodbye hands back the
            # rest, so the controller takes nobody else for its culprit.
            _end(worker, EXIT_INTERRUPTED, "cancelled with force", goodbye=True)
        busy = current is not None
        if limit is not None and busy and rss_bytes() > limit * MEMORY_MARGIN:
            _end(worker, EXIT_MEMORY, memory_exceeded(limit), failed=True)


def _end(worker: Guarded, code: int, why: str, failed: bool = False, goodbye: bool = False) -> None:
    """Leave in the middle of the call: hand back what is queued, say why, exit."""
    returned = [t[0] for t in list(worker._queue)]
    ep = worker._results_ep
    if (failed or goodbye) and ep is not None:
        # Failed: the call is not handed back and counts an attempt, as a
        # death does. Naming the call puts the blame where it belongs.
        sender = worker._result_sender.rpartition("/")[0] + "/" + DRAIN_CHANNEL
        bye = Bye(worker.id, returned, failed=why if failed else None, task=worker._current)
        # Results done but held back for a batch would die with the process,
        # and their tasks run again: they go first. (Their call time is not
        # known here: reported as none; the batcher smooths it with others.)
        numbers = itertools.count(1)
        held = list(
            result_messages(
                list(worker.marks.held),
                0.0,
                worker._limit,
                lambda: (sender, next(numbers), worker._skey),
            )
        )
        links.send_goodbye(ep, worker._curve, sender, worker._skey, bye.header(), held)
    log.warning("worker %s: %s, leaving in the middle of task %s", worker.id, why, worker._current)
    kill_rest_of_group()  # the abandoned call's children go with it
    if worker.options.daemon and worker.options.parent_pid is None:
        # A daemon without a supervisor: nobody would start the next
        # process, so this one becomes it, with the same command line.
        logging.shutdown()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    os._exit(code)


class Guard:
    """The guard of one session: its loop, run on a thread of its own.

    The loop may sleep on its socket without a timeout, so :meth:`wake`
    (called once the session's ``stop`` event is set) closes the write end
    of a pipe whose read end the loop polls.
    """

    def __init__(
        self, worker: Guarded, sock: zmq.Socket[Any], welcome: Welcome, stop: threading.Event
    ) -> None:
        self._worker, self._sock, self._stop_event = worker, sock, stop
        self._guard = ReplayGuard()
        # Broadcasts published before the welcome are not for this session.
        self._guard.check(f"{welcome.controller}/pub", welcome.pub_seq)
        self._endpoint = side_endpoint(worker.address, welcome, "control")
        self._wake_r, self._wake_w = os.pipe()

    def __call__(self) -> None:
        w = self._worker
        try:
            guard_loop(
                w,
                self._sock,
                self._endpoint,
                w._pub_key,
                self._guard,
                self._stop_event,
                self._wake_r,
            )
        finally:
            self._sock.close()
            os.close(self._wake_r)

    def wake(self) -> None:
        if self._wake_w >= 0:
            os.close(self._wake_w)  # its read end turns readable: end of file
            self._wake_w = -1


def start_guard(
    worker: Guarded,
    sock: zmq.Socket[Any],
    welcome: Welcome,
    stop: threading.Event,
    thread: StandbyThread | None = None,
) -> StandbyThread:
    """Run the guard of a session on ``thread`` (a new one if None); it closes
    ``sock`` when ``stop`` is set. The thread's ``join`` wakes it first."""
    thread = standby(GUARD_THREAD) if thread is None else thread
    guard = Guard(worker, sock, welcome, stop)
    thread.begin(guard, guard.wake)
    return thread


def drop_cancelled(queue: collections.deque[tuple[int, str, Any, bool]], header: Any) -> bool:
    """A CANCEL: drop the tasks it names from the queue, unrun; False if malformed.

    One already run has its result on the way, which the controller drops.
    """
    try:
        gone = set(Cancel.parse(header).tasks)
    except DecodeError:
        return False
    kept = [t for t in queue if t[0] not in gone]
    queue.clear()
    queue.extend(kept)
    return True


def recycle_reason(options: WorkerOptions, done: int) -> str | None:
    """Why this process should leave and be replaced after a call, if it should."""
    if options.max_tasks is not None and done >= options.max_tasks:
        return f"ran {done} task(s), max_tasks={options.max_tasks}"
    if options.max_memory is not None and (rss := rss_bytes()) > options.max_memory:
        return f"resident memory {rss} bytes after a task, over {format_size(options.max_memory)}"
    return None
