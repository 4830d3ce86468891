"""The session messages as typed records: each built and checked here only.

A record's ``header()`` is what goes on the wire (a msgpack map); its
``parse()`` checks a received map and raises :class:`DecodeError` naming
what is wrong, so neither side reads loose dict keys.
"""

from __future__ import annotations

import operator
import pickle
from dataclasses import asdict, dataclass, field
from typing import Any

from zmqworkers.errors import DecodeError, make_remote_error
from zmqworkers.protocol.messages import MAX_SENDER_LENGTH, NONCE_SIZE
from zmqworkers.protocol.segments import valid_prefix


def is_int(value: Any) -> bool:
    """An integer that is not a bool (msgpack keeps the two apart; Python does not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _map(header: Any, what: str) -> dict[str, Any]:
    if not isinstance(header, dict):
        raise DecodeError("malformed", f"{what} header is not a map")
    return header


def _size(value: Any) -> int:
    """A size limit from a header: a positive integer, or 0 for none given."""
    return value if is_int(value) and value > 0 else 0


def _prefix(value: Any) -> str:
    """A shared-memory segment prefix from a header, or "" for none."""
    return value if isinstance(value, str) and valid_prefix(value) else ""


@dataclass(frozen=True)
class Hello:
    """A worker asks to join (task channel, signed with the shared key)."""

    id: str
    nonce: bytes
    host: str = ""
    pid: int = 0
    capacity: int = 2
    protocol: int = 0
    version: str = "?"
    # The worker vouches that nothing on its link can change bytes in transit.
    link_protected: bool = False
    # The address it dialled: the controller's ipc folder marks a local worker.
    dialled: str = ""
    # The largest message it accepts (0: not said); neither side of the
    # session sends more than the smaller of the two sides' limits.
    max_message_size: int = 0
    # It can take and send large buffers as shared-memory segments.
    shm: bool = False

    def header(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, header: Any) -> Hello:
        hdr = _map(header, "hello")
        wid, nonce = hdr.get("id"), hdr.get("nonce")
        if not isinstance(wid, str) or not 0 < len(wid) < MAX_SENDER_LENGTH - 40 or "@" in wid:
            raise DecodeError("malformed", "hello without a valid worker id")
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise DecodeError("malformed", f"hello from {wid} without a {NONCE_SIZE}-byte nonce")
        pid, capacity, host = hdr.get("pid", 0), hdr.get("capacity", 2), hdr.get("host", "")
        if not (is_int(pid) and is_int(capacity) and isinstance(host, str)):
            raise DecodeError("malformed", f"hello from {wid} with fields of the wrong type")
        protocol = hdr.get("protocol", 0)
        dialled = hdr.get("dialled", "")
        return cls(
            id=wid,
            nonce=nonce,
            host=host,
            pid=pid,
            capacity=capacity,
            protocol=protocol if is_int(protocol) else 0,
            version=str(hdr.get("version", "?")),
            link_protected=hdr.get("link_protected") is True,
            dialled=dialled if isinstance(dialled, str) else "",
            max_message_size=_size(hdr.get("max_message_size")),
            shm=hdr.get("shm") is True,
        )


@dataclass(frozen=True)
class Welcome:
    """The controller's answer to a hello: the session and where to send."""

    controller: str
    nonce: bytes  # the worker's, echoed: which hello this answers
    session: bytes  # the controller's nonce
    pub_nonce: bytes
    pub_seq: int
    results: int | str  # a port on the task address's host, or an endpoint
    control: int | str
    heartbeat_interval: float
    heartbeat_misses: int
    sign_buffers: bool
    # The side channels' ipc addresses, for a local worker only.
    ipc: dict[str, str] = field(default_factory=dict)
    # The largest message the controller accepts (0: not said).
    max_message_size: int = 0
    # The lowest level of task log records to send back ("" for none).
    forward_logs: str = ""
    # The prefix of the session's shared-memory segments ("": none).
    shm_prefix: str = ""

    def header(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, header: Any) -> Welcome:
        hdr = _map(header, "welcome")
        checks = {
            "controller": isinstance(hdr.get("controller"), str),
            "nonce": isinstance(hdr.get("nonce"), bytes),
            "session": isinstance(hdr.get("session"), bytes),
            "pub_nonce": isinstance(hdr.get("pub_nonce"), bytes),
            "pub_seq": is_int(hdr.get("pub_seq")),
            "results": isinstance(hdr.get("results"), int | str),
            "control": isinstance(hdr.get("control"), int | str),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise DecodeError("malformed", f"welcome with bad {', '.join(bad)}")
        ipc = hdr.get("ipc")
        return cls(
            controller=hdr["controller"],
            nonce=hdr["nonce"],
            session=hdr["session"],
            pub_nonce=hdr["pub_nonce"],
            pub_seq=hdr["pub_seq"],
            results=hdr["results"],
            control=hdr["control"],
            heartbeat_interval=float(hdr.get("heartbeat_interval", 0.0)),
            heartbeat_misses=int(hdr.get("heartbeat_misses", 0)),
            sign_buffers=hdr.get("sign_buffers") is not False,
            ipc=ipc if isinstance(ipc, dict) else {},
            max_message_size=_size(hdr.get("max_message_size")),
            forward_logs=str(hdr.get("forward_logs") or ""),
            shm_prefix=_prefix(hdr.get("shm_prefix")),
        )


@dataclass(frozen=True)
class Refused:
    """The controller will not take this worker: now (``fatal`` false) or ever."""

    reason: str
    code: str  # "version", "closing"
    fatal: bool = False
    nonce: bytes | None = None  # the hello's, when there was a readable one
    # Set when the envelope's protocol differs, so an old worker reads it too.
    version: bool = False

    def header(self) -> dict[str, Any]:
        hdr: dict[str, Any] = {"reason": self.reason, "code": self.code, "fatal": self.fatal}
        if self.nonce is not None:
            hdr["nonce"] = self.nonce
        if self.version:
            hdr["version"] = True
        return hdr

    @classmethod
    def parse(cls, header: Any) -> Refused:
        hdr = header if isinstance(header, dict) else {"reason": header}
        nonce = hdr.get("nonce")
        return cls(
            reason=str(hdr.get("reason", header)),
            code=str(hdr.get("code", "")),
            fatal=bool(hdr.get("fatal")),
            nonce=nonce if isinstance(nonce, bytes) else None,
            version=hdr.get("version") is True,
        )


@dataclass(frozen=True)
class Bye:
    """A worker leaves and hands back the tasks it held.

    ``failed`` is set when it leaves in the middle of a call that cannot
    finish (it went over its memory limit): the call counts an attempt,
    as when a worker dies, and the text says why. ``task`` names the call
    it leaves in the middle of: the one to blame, whatever the controller
    took for running (results held back for a batch die with the process).
    """

    id: str
    returned: list[int]
    failed: str | None = None
    task: int | None = None

    def header(self) -> dict[str, Any]:
        hdr: dict[str, Any] = {"id": self.id, "returned": self.returned}
        if self.failed is not None:
            hdr["failed"] = self.failed
        if self.task is not None:
            hdr["task"] = self.task
        return hdr

    @classmethod
    def parse(cls, header: Any, wid: str) -> Bye:
        returned = header.get("returned", []) if isinstance(header, dict) else []
        if not isinstance(returned, list) or not all(is_int(t) for t in returned):
            raise DecodeError("malformed", f"bye from {wid} with a bad task list")
        failed = header.get("failed") if isinstance(header, dict) else None
        task = header.get("task") if isinstance(header, dict) else None
        return cls(
            wid,
            returned,
            failed[:500] if isinstance(failed, str) else None,
            task if is_int(task) else None,
        )


def _task_ids(value: Any, what: str) -> list[int]:
    if not isinstance(value, list) or not all(is_int(t) for t in value):
        raise DecodeError("malformed", f"{what} without a list of task ids")
    return value


@dataclass(frozen=True)
class Cancel:
    """The controller takes back tasks a worker holds but has not started."""

    tasks: list[int]

    def header(self) -> dict[str, Any]:
        return {"tasks": self.tasks}

    @classmethod
    def parse(cls, header: Any) -> Cancel:
        return cls(_task_ids(_map(header, "cancel").get("tasks"), "cancel"))


@dataclass(frozen=True)
class Interrupt:
    """A worker's process must end now: the call it runs was cancelled or timed out.

    Broadcast on the control channel, which the worker reads on a thread of
    its own while its main thread is in the call. It exits with
    ``EXIT_INTERRUPTED`` and whoever started it starts another.

    With ``cancel`` (tasks cancelled with force that the controller saw
    as prefetched) it ends only if it runs one of them, now or later; it
    never starts one. The controller cannot know whether the worker has
    already moved on to such a task (results of a batch are held back),
    the worker does.
    """

    worker: str
    task: int | None
    cancel: tuple[int, ...] = ()
    # The tag of the worker's session: an order repeated (a broadcast can
    # be missed) never reaches the next process under the same name.
    session: str = ""

    def header(self) -> dict[str, Any]:
        hdr: dict[str, Any] = {"worker": self.worker, "task": self.task}
        if self.cancel:
            hdr["cancel"] = list(self.cancel)
        if self.session:
            hdr["session"] = self.session
        return hdr

    @classmethod
    def parse(cls, header: Any) -> Interrupt:
        hdr = _map(header, "interrupt")
        worker, task = hdr.get("worker"), hdr.get("task")
        if not isinstance(worker, str) or not (task is None or is_int(task)):
            raise DecodeError("malformed", "interrupt without a worker id")
        cancel, session = hdr.get("cancel"), hdr.get("session", "")
        if not isinstance(session, str):
            raise DecodeError("malformed", "interrupt with a bad session tag")
        return cls(worker, task, tuple(_task_ids(cancel, "interrupt")) if cancel else (), session)


@dataclass(frozen=True)
class Status:
    """A worker's heartbeat: what it does now, and maybe what it holds.

    ``held`` and ``received`` come only with a status sent on the results
    socket itself, behind every result sent before it: the tasks the worker
    still holds (queued, or done with the result not yet sent), and the
    number of the last TASKS message it received. A task sent in a message
    up to ``received``, not held and not delivered, will not come back.
    """

    state: str | None
    task: int | None
    held: list[int] | None = None
    received: int | None = None
    # The worker process's resident memory (bytes) and CPU use (percent of
    # one core since its last heartbeat), when it says them.
    rss: int | None = None
    cpu: float | None = None

    def header(self) -> dict[str, Any]:
        hdr: dict[str, Any] = {"state": self.state, "task": self.task}
        if self.held is not None and self.received is not None:
            hdr.update(held=self.held, received=self.received)
        if self.rss is not None:
            hdr["rss"] = self.rss
        if self.cpu is not None:
            hdr["cpu"] = self.cpu
        return hdr

    @classmethod
    def parse(cls, header: Any, wid: str) -> Status:
        if not isinstance(header, dict):
            raise DecodeError("malformed", f"heartbeat from {wid} without a header map")
        state, task = header.get("state"), header.get("task")
        held, received = header.get("held"), header.get("received")
        if held is not None and not (
            isinstance(held, list) and all(is_int(t) for t in held) and is_int(received)
        ):
            raise DecodeError("malformed", f"heartbeat from {wid} with a bad list of tasks held")
        rss, cpu = header.get("rss"), header.get("cpu")
        return cls(
            None if state is None else str(state),
            task if is_int(task) else None,
            held,
            received if held is not None else None,
            rss if is_int(rss) and rss >= 0 else None,  # type: ignore[operator]
            float(cpu) if isinstance(cpu, float | int) and not isinstance(cpu, bool) else None,
        )


@dataclass(frozen=True)
class ForwardedLog:
    """A log record a task emitted on a worker, under the ``log`` key of a MESSAGE.

    ``dropped`` counts the records the worker dropped (over its rate) since
    the last one it sent; a record with ``level`` 0 only says that count.
    """

    level: int
    logger: str
    message: str
    created: float
    dropped: int = 0

    def header(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, log: Any, wid: str) -> ForwardedLog:
        if not isinstance(log, dict):
            raise DecodeError("malformed", f"log record from {wid} is not a map")
        level, dropped, created = log.get("level"), log.get("dropped", 0), log.get("created")
        if not (is_int(level) and is_int(dropped) and isinstance(created, float | int)):
            raise DecodeError("malformed", f"log record from {wid} with fields of the wrong type")
        return cls(
            int(level),  # type: ignore[arg-type]
            str(log.get("logger", "?"))[:200],
            str(log.get("message", ""))[:MAX_LOG_MESSAGE],
            float(created),
            max(0, dropped),
        )


MAX_LOG_MESSAGE = 16_000


_TUPLE, _THREE, _INT, _BOOL = {tuple}, {3}, {int}, {bool}
_first, _second = operator.itemgetter(0), operator.itemgetter(1)


def check_results(items: Any, wid: str) -> None:
    """A RESULTS payload is a list of ``(task id, ok, value)``; raise if not."""
    if not isinstance(items, list):
        raise DecodeError("malformed", "results payload is not a list")
    # What a worker sends: exact tuples, int ids, bool flags. Checked by type
    # identity first, in passes that run in C (no Python step per entry);
    # anything else takes the full check.
    if not items:
        return
    if (
        set(map(type, items)) == _TUPLE
        and set(map(len, items)) == _THREE
        and set(map(type, map(_first, items))) == _INT
        and set(map(type, map(_second, items))) == _BOOL
    ):
        return
    for item in items:
        if not (
            isinstance(item, tuple | list)
            and len(item) == 3
            and is_int(item[0])
            and isinstance(item[1], bool)
        ):
            raise DecodeError("malformed", f"result entry from {wid} is not (id, ok, value)")


def remote_error(info: Any, wid: str, host: str) -> BaseException:
    """The exception a failed result stands for (see ``describe_exception``)."""
    if not isinstance(info, dict):
        return make_remote_error("Error", repr(info), "", wid, host)
    original = None
    if info.get("exc"):
        try:
            original = pickle.loads(info["exc"])
        except Exception:
            original = None
    return make_remote_error(
        str(info.get("type", "Exception")),
        str(info.get("message", "")),
        str(info.get("traceback", "")),
        wid,
        host,
        original if isinstance(original, BaseException) else None,
    )
