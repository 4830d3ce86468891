"""The exceptions zmqworkers raises, all under one root.

::

    ZmqWorkersError
    ├── ConfigurationError      a bad option: insecure bind, unreadable key file, ...
    ├── MessageTooLarge         a task's argument or result over max_message_size
    ├── DecodeError             a message that cannot be trusted or understood
    │   └── ProtocolVersionError   the peer speaks another protocol version
    ├── RemoteError             the user's function raised on a worker
    │                           (a dynamic subclass also inherits the original
    │                           exception class, so ``except ValueError`` works)
    ├── WorkerLost              a task was running on workers that died (or lost
    │                           its result), too often
    ├── TaskTimeout             a task ran past its timeout; its worker was replaced
    ├── ClusterShutdown         work was submitted to, or cut short by, a closed cluster
    ├── SlurmError              sbatch, squeue, sacct or scancel failed or did not answer
    └── EngineClosed            a command reached a controller engine that has closed

``DecodeError`` is the only exception the protocol layer raises for bad input:
whatever arrives on a socket either decodes into a message or raises it.
"""

from __future__ import annotations

from typing import Any


class ZmqWorkersError(Exception):
    """Root of every exception raised by zmqworkers itself."""


class ConfigurationError(ZmqWorkersError, ValueError):
    """An option or combination of options that cannot work."""


class MessageTooLarge(ZmqWorkersError, ValueError):
    """A message would be larger than its link allows, so it is not sent.

    ``size`` and ``limit`` are in bytes: the limit is the smaller of the
    two sides' ``max_message_size``. A task whose argument (or result) is
    too large fails with this error; the cluster and the worker go on.
    """

    def __init__(self, message: str, size: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class DecodeError(ZmqWorkersError):
    """A message was refused: bad signature, malformed frames, wrong types.

    ``reason`` is a short stable word (``"signature"``, ``"malformed"``,
    ``"version"``, ``"size"``, ``"replay"``, ...) used to count drops.
    """

    def __init__(
        self, reason: str, detail: str = "", *, kind: int | None = None, seq: int | None = None
    ) -> None:
        self.reason = reason
        self.detail = detail
        # Of a signed message whose payload could not be read: what it was.
        self.kind = kind
        self.seq = seq
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ProtocolVersionError(DecodeError):
    """The peer speaks a protocol version this side does not."""

    def __init__(self, theirs: int, ours: int, who: str = "peer") -> None:
        self.theirs = theirs
        self.ours = ours
        super().__init__(
            "version",
            f"{who} speaks protocol {theirs}, this side speaks {ours}: "
            "install the same zmqworkers release on both sides",
        )


class ClusterShutdown(ZmqWorkersError, RuntimeError):
    """The cluster was shut down before, or while, the work was done."""


class SlurmError(ZmqWorkersError, RuntimeError):
    """A Slurm command failed or did not answer in time; the message holds its output."""


class EngineClosed(ZmqWorkersError, RuntimeError):
    """A command reached a controller engine that has closed.

    Also a ``RuntimeError``, as the engine raised before it had a type.
    """


class RemoteTraceback(ZmqWorkersError):
    """Carries a remote traceback's text; chained as ``__cause__``."""

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(text)

    def __str__(self) -> str:
        return self.text


class RemoteError(ZmqWorkersError):
    """The user's function raised on a worker.

    Attributes: ``type_name`` (e.g. ``"ValueError"``), ``remote_message``,
    ``remote_traceback`` (formatted text), ``worker`` (id) and ``host``.
    """

    type_name: str
    remote_message: str
    remote_traceback: str
    worker: str
    host: str

    def __str__(self) -> str:
        where = f" on worker {self.worker}" + (f" ({self.host})" if self.host else "")
        return (
            f"{self.type_name}: {self.remote_message}{where}\n\n"
            f"Remote traceback:\n{self.remote_traceback}"
        )

    def __reduce__(self) -> Any:
        return (
            _rebuild_remote_error,
            (
                self.type_name,
                self.remote_message,
                self.remote_traceback,
                self.worker,
                self.host,
                None,
            ),
        )


def _rebuild_remote_error(
    type_name: str,
    message: str,
    traceback_text: str,
    worker: str,
    host: str,
    original: BaseException | None,
) -> RemoteError:
    return make_remote_error(type_name, message, traceback_text, worker, host, original)


_SUBCLASS_CACHE: dict[type, type] = {}


def make_remote_error(
    type_name: str,
    message: str,
    traceback_text: str,
    worker: str,
    host: str,
    original: BaseException | None = None,
) -> RemoteError:
    """Build the RemoteError for a failure on a worker.

    When ``original`` (the unpickled remote exception) is given, the result is
    an instance of a class deriving from both ``RemoteError`` and the original
    class, carrying the original's args and attributes.
    """
    exc: RemoteError
    cls: type = RemoteError
    if original is not None and not isinstance(original, RemoteError):
        orig_cls = type(original)
        cls = _SUBCLASS_CACHE.get(orig_cls) or _remote_subclass(orig_cls)
    try:
        exc = cls.__new__(cls, *(original.args if original is not None else ()))
        if original is not None:
            exc.args = original.args
            exc.__dict__.update(getattr(original, "__dict__", {}))
    except Exception:
        exc = RemoteError.__new__(RemoteError)
    exc.type_name = type_name
    exc.remote_message = message
    exc.remote_traceback = traceback_text
    exc.worker = worker
    exc.host = host
    exc.__cause__ = RemoteTraceback(traceback_text)
    return exc


def _remote_subclass(orig_cls: type) -> type:
    try:
        sub = type(
            f"Remote{orig_cls.__name__}",
            (RemoteError, orig_cls),
            {"__module__": __name__, "__str__": RemoteError.__str__},
        )
    except TypeError:
        # Layout conflicts (exotic C exception types) leave the plain class.
        sub = RemoteError
    _SUBCLASS_CACHE[orig_cls] = sub
    return sub


# How a task's attempt is named when its worker lives on but the task's
# result was lost on the way (see Scheduler.reconcile).
RESULT_NEVER_ARRIVED = (
    "its result never arrived: a message was dropped on the way, the task's "
    "or its result's (see the dropped-message counts and the logs of both sides)"
)


class WorkerLost(ZmqWorkersError):
    """A task was running on ``max_attempts`` workers that each died.

    ``deaths`` lists ``(worker_id, how)`` pairs, ``how`` saying how each died
    (``"killed by SIGKILL: out of memory?"``, ``"heartbeats lost"``, ...).
    """

    def __init__(self, task_id: int, deaths: list[tuple[str, str]]) -> None:
        self.task_id = task_id
        self.deaths = list(deaths)
        lines = "; ".join(f"{w}: {how}" for w, how in deaths)
        lost = any(how == RESULT_NEVER_ARRIVED for _, how in deaths)
        which = "that died or lost its result" if lost else "that died"
        super().__init__(
            f"task {task_id} was running on {len(deaths)} worker(s) {which} "
            f"and is not retried again ({lines})"
        )


class TaskTimeout(ZmqWorkersError, TimeoutError):
    """A task ran longer than its timeout, so its worker process was replaced.

    Names the task, the worker, its host and the seconds. Not retried: a
    task that hangs once is likely to hang again (submit it again to retry).
    """

    def __init__(self, task_id: int, worker: str, host: str, seconds: float) -> None:
        self.task_id = task_id
        self.worker = worker
        self.host = host
        self.seconds = seconds
        where = f" on host {host}" if host else ""
        super().__init__(
            f"task {task_id} ran past its timeout of {seconds:g} s on worker {worker}{where}; "
            "the worker process was replaced and the task is not retried"
        )
