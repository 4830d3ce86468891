"""What a worker runs: function specs turned into calls, and failures into records.

Kept apart from the loop, so what a task's function sees (its calling
convention, how its exception travels) reads in one place.
"""

from __future__ import annotations

import logging
import pickle
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from zmqworkers.errors import MessageTooLarge
from zmqworkers.protocol import Kind, SessionKey, dumps, encode
from zmqworkers.protocol.messages import frames_size
from zmqworkers.protocol.segments import release

# One task's outcome as a worker sends it: (task id, ok, value or error record).
Outcome = tuple[int, bool, Any]

log = logging.getLogger(__name__)


class FunctionCache:
    """Function specs by id.

    The controller decides what a worker holds: it tracks the specs it sent
    and names in a later FUNC's ``forget`` those no queued task needs. The
    cache never drops a spec by itself, since it cannot know whether a task
    already queued here still needs it.
    """

    def __init__(self) -> None:
        self._specs: dict[str, Callable[[Any], Any]] = {}

    def __contains__(self, spec_id: str) -> bool:
        return spec_id in self._specs

    def __len__(self) -> int:
        return len(self._specs)

    def add(self, spec_id: str, spec: Any) -> None:
        self._specs[spec_id] = make_call(spec)

    def forget(self, spec_ids: Any) -> None:
        for spec_id in spec_ids if isinstance(spec_ids, list) else ():
            if isinstance(spec_id, str):
                self._specs.pop(spec_id, None)

    def take(self, spec_id: Any, spec: Any, forget: Any) -> bool:
        """A FUNC message's content; False if it makes no sense."""
        if not isinstance(spec_id, str) or not (isinstance(spec, tuple) and len(spec) == 4):
            return False
        self.forget(forget)
        try:
            self.add(spec_id, spec)
        except ValueError:
            return False
        return True

    def get(self, spec_id: str) -> Callable[[Any], Any] | None:
        return self._specs.get(spec_id)


def task_entries(spec_id: Any, items: Any) -> list[tuple[int, str, Any, bool]] | None:
    """A TASKS message's content as queue entries ``(id, spec, argument, last)``.

    None if it makes no sense: checked whole first, so a batch is taken
    entirely or not at all.
    """
    if not isinstance(spec_id, str) or not isinstance(items, list):
        return None
    if not all(isinstance(t, tuple) and len(t) == 2 and type(t[0]) is int for t in items):
        return None
    end = len(items) - 1
    return [(task_id, spec_id, arg, i == end) for i, (task_id, arg) in enumerate(items)]


def holding(
    status: dict[str, Any],
    queue: Iterable[tuple[int, Any, Any, Any]],
    batch: Iterable[Outcome],
    received: int,
) -> dict[str, Any]:
    """A heartbeat header for the results socket: ``status`` and what the worker holds.

    Held: the tasks queued and those done whose results are not sent yet.
    Sent between calls by the thread that runs them, so nothing is running.
    """
    held = [t[0] for t in queue] + [t[0] for t in batch]
    return {**status, "held": held, "received": received}


def make_call(spec: Any) -> Callable[[Any], Any]:
    """Turn a decoded function spec into ``call(task) -> result``.

    Conventions: ``"task"`` calls ``func(task, *args, **kwargs)`` (the seed's
    convention); ``"call"`` takes the task as ``(args, kwargs)`` (``submit``);
    ``"app"`` builds the app once and calls ``app.multiprocessing_func(task)``.
    """
    convention, func, args, kwargs = spec
    if convention == "task":
        if not args and not kwargs:
            return func  # type: ignore[no-any-return]
        return lambda task: func(task, *args, **kwargs)
    if convention == "call":
        return lambda task: func(*task[0], **task[1])
    if convention == "app":
        from zmqworkers.client.apps import app_call

        return app_call(func, *args, **kwargs)
    raise ValueError(f"unknown calling convention {convention!r}")


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """A structured, always-picklable description of a raised exception."""
    exc_bytes: bytes | None
    try:
        data = pickle.dumps(exc, protocol=5)
        pickle.loads(data)  # an exception that cannot come back is left out
        exc_bytes = data
    except Exception:
        exc_bytes = None
    return {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "exc": exc_bytes,
    }


def picklable(item: Outcome) -> Outcome:
    try:
        dumps(item[2])
        return item
    except Exception as exc:
        err = TypeError(f"the result of task {item[0]} cannot be pickled: {exc}")
        return (item[0], False, describe_exception(err))


def encode_results(
    sender: str,
    seq: int,
    key: bytes | SessionKey,
    batch: list[Outcome],
    busy: float,
) -> list[Any]:
    """The frames of one RESULTS message."""
    # The controller sizes later batches from the time the calls took.
    header = {"busy": busy, "n": len(batch)}
    try:
        return encode(Kind.RESULTS, sender, seq, key, header, batch, has_payload=True)
    except Exception:
        # One unpicklable result must not take its batch-mates with it.
        items = [picklable(item) for item in batch]
        return encode(Kind.RESULTS, sender, seq, key, header, items, has_payload=True)


def within(frames: list[Any], limit: int) -> list[Any]:
    """``frames``, or :class:`MessageTooLarge` if together over ``limit`` bytes."""
    size = frames_size(frames)
    if size > limit:
        release(frames)  # not sent: the names it said freed go in a later one
        raise MessageTooLarge(
            f"a message of {size} bytes is over the limit of {limit}", size, limit
        )
    return frames


Signing = Callable[[], tuple[str, int, "bytes | SessionKey"]]


def result_messages(
    batch: list[Outcome], busy: float, limit: int, signing: Signing
) -> Iterator[list[Any]]:
    """The RESULTS messages of ``batch``, none over ``limit`` bytes, in sending order.

    A batch too large together goes out in smaller messages. A result too
    large alone is replaced by a task error naming its size and the limit:
    sent as it is, the controller's socket would close the connection on it
    and the result would vanish without a word. The worker goes on.
    """
    frames = encode_results(*signing(), batch, busy)
    size = frames_size(frames)
    if size <= limit:
        yield frames
        return
    release(frames)  # not sent: its shared-memory segments have no reader
    if len(batch) > 1:
        half = len(batch) // 2
        share = busy * half / len(batch)
        yield from result_messages(batch[:half], share, limit, signing)
        yield from result_messages(batch[half:], busy - share, limit, signing)
        return
    task_id = batch[0][0]
    err = MessageTooLarge(
        f"the result of task {task_id} makes a message of {size} bytes, over the limit "
        f"of {limit} bytes (max_message_size: the smaller of the controller's and the "
        "worker's). Not sent: return large data another way (a shared file), or raise "
        "max_message_size on both sides",
        size,
        limit,
    )
    log.warning("%s", err)
    yield encode_results(*signing(), [(task_id, False, describe_exception(err))], busy)
