"""Worker sessions as a pure table: a hello in, a welcome or a refusal out.

No sockets, threads or clocks: the engine passes the time it read, and the
nonce it drew, so tests (tests/unit/test_sessions_property.py) drive the
table with any numbers. A session lives pending (hello answered), then
live (its first signed message arrived, or at once for one that
``joins_at_welcome``), then retired (left or lost, kept a while so late
results still have a key).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass

from zmqworkers._version import __version__
from zmqworkers.controller.scheduler import WorkerState
from zmqworkers.errors import DecodeError
from zmqworkers.protocol.messages import (
    DEFAULT_MAX_MESSAGE_SIZE,
    SessionKey,
    library_compatible,
    packs,
    session_limit,
)
from zmqworkers.protocol.records import Hello, Refused
from zmqworkers.protocol.session import SEQUENCED_CHANNELS, sender_name, session_key, session_tag

# Hellos waiting for their worker's first signed message: bounded, so replayed
# hellos cannot grow the controller's memory.
MAX_PENDING_SESSIONS = 4096
# Sessions of workers that left or were lost, kept so a late result of theirs
# is still delivered (the scheduler takes late results).
MAX_RETIRED_SESSIONS = 1024


@dataclass
class Session:
    """One worker connection, from its hello to its leaving.

    ``key`` signs everything after the hello, both ways; ``tag`` (the
    controller's nonce, in hex) names the session in the worker's senders.
    """

    tag: str
    route: bytes
    key: SessionKey
    state: WorkerState
    expires: float
    worker_nonce: bytes = b""
    via_ipc: bool = False  # dialled the ipc folder of local workers
    # The largest message either side sends: the smaller of the two limits.
    limit: int = DEFAULT_MAX_MESSAGE_SIZE
    joined: bool = False
    retired: bool = False
    # Joins at its welcome, not at its first signed message: see hello().
    joins_at_welcome: bool = False
    # Its first message on the result channel came: it has its welcome.
    heard: bool = False


@dataclass(frozen=True)
class Link:
    """What the table needs to know of the controller's own sockets."""

    key: bytes
    host: str
    # All of the controller's sockets are on links nothing can change.
    protected: bool
    sign_buffers: bool
    # The ipc folder local workers dial ("" when there is none).
    local_address: str
    # How long a hello's session waits for its first signed message.
    hello_ttl: float
    # The largest message the controller accepts.
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    # The controller's shared-memory segment prefix ("": none), for local
    # workers on the ipc folder (controller/segments.py).
    segments: str = ""
    # local_address is the private folder (mode 0700) this controller made,
    # not an ipc address given as ``bind``.
    private_ipc: bool = False


class SessionTable:
    """Pending, live and retired sessions, by worker id and by tag."""

    def __init__(
        self,
        link: Link,
        max_pending: int = MAX_PENDING_SESSIONS,
        max_retired: int = MAX_RETIRED_SESSIONS,
    ) -> None:
        self.link = link
        self.max_pending = max_pending
        self.max_retired = max_retired
        self.pending: OrderedDict[str, Session] = OrderedDict()  # by worker id
        self.live: dict[str, Session] = {}  # by worker id
        self.by_tag: dict[str, Session] = {}  # pending, live, retired
        self.retired: OrderedDict[str, Session] = OrderedDict()  # by tag

    def hello(
        self,
        route: bytes,
        hello: Hello,
        now: float,
        nonce: bytes,
        *,
        closing: bool = False,
        local_pids: Collection[int] = (),
    ) -> Session | Refused:
        """Answer a hello: a (pending) session to welcome, or a refusal.

        ``nonce`` is the controller's fresh nonce for a new session.
        """
        if not library_compatible(__version__, hello.version):
            return Refused(
                f"worker runs zmqworkers {hello.version}, controller zmqworkers "
                f"{__version__}: install the same zmqworkers release on both sides",
                "version",
                fatal=True,
                nonce=hello.nonce,
            )
        if closing:
            return Refused("controller is shutting down", "closing", nonce=hello.nonce)
        pending = self.pending.get(hello.id)
        if pending is not None and pending.worker_nonce == hello.nonce and pending.route == route:
            # The same hello again (the worker re-sends it when the answer is
            # slow): answer with the same session, or the two would cross.
            return pending
        live = self.live.get(hello.id)
        if (
            live is not None
            and live.joins_at_welcome
            and live.worker_nonce == hello.nonce
            and live.route == route
        ):
            return live  # joined at its welcome, and saying the same hello again
        link = self.link
        w = WorkerState(
            id=hello.id,
            host=hello.host,
            pid=hello.pid,
            capacity=min(max(1, hello.capacity), 1 << 20),
            local=hello.pid in local_pids and hello.host == link.host,
            last_seen=now,
            joined=now,
        )
        # A worker that dialled the private ipc folder of local workers runs
        # on this host (the hello is signed, so the claim is a key holder's).
        via_ipc = link.local_address.startswith("ipc://") and hello.dialled == link.local_address
        # Both ends must vouch for the link before buffers go unhashed: ours
        # is protected if all our sockets are, or if it is that ipc folder.
        ours_ok = link.protected or (via_ipc and not link.sign_buffers)
        protected = ours_ok and hello.link_protected
        w.buffers_signed = not protected
        w.session = nonce.hex()
        # Large buffers through shared memory: a local worker on the ipc
        # folder that offered it, in a session that does not hash buffers.
        shm = via_ipc and protected and hello.shm and bool(link.segments)
        session = Session(
            tag=nonce.hex(),
            route=route,
            key=session_key(
                link.key,
                hello.nonce,
                nonce,
                sign_buffers=not protected,
                segments=f"{link.segments}{nonce.hex()[:12]}-" if shm else "",
            ),
            state=w,
            expires=now + link.hello_ttl,
            worker_nonce=hello.nonce,
            via_ipc=via_ipc,
            limit=session_limit(link.max_message_size, hello.max_message_size),
        )
        # The worker joins on its first message signed with the session key:
        # a replayed hello cannot produce one, so it never gets a task. Except
        # one of this controller's own local workers on its private ipc folder,
        # which joins at its welcome, so that its first tasks follow the
        # welcome at once rather than a round trip on the result channel later.
        # Only a process of this user can reach that folder (and such a
        # process can read the key anyway); a hello replayed to this
        # controller is refused for its sequence number before it gets here,
        # and one said again after its session ended (the same nonce) waits
        # for a signed message like any other.
        session.joins_at_welcome = (
            via_ipc
            and w.local
            and link.private_ipc
            and not any(r.worker_nonce == hello.nonce for r in self.retired.values())
        )
        old = self.pending.pop(hello.id, None)
        if old is not None:
            self.by_tag.pop(old.tag, None)
        if len(self.pending) >= self.max_pending:
            _, oldest = self.pending.popitem(last=False)
            self.by_tag.pop(oldest.tag, None)
        self.pending[hello.id] = session
        self.by_tag[session.tag] = session
        return session

    def packs(self, wid: str) -> bool:
        """Whether payloads to worker ``wid`` pack their mid-size buffers."""
        s = self.live.get(wid)
        return s is not None and packs(s.key)

    def get(self, tag: str) -> Session | None:
        return self.by_tag.get(tag)

    def of_sender(self, sender: str) -> Session:
        """The session a sender name (``<id>@<tag>/<channel>``) belongs to."""
        s = self.by_tag.get(session_tag(sender))
        if s is None:
            # No key to check it with: as good as a bad signature.
            raise DecodeError("signature", f"{sender[:80]!r} is in no session")
        return s

    def leave_pending(self, s: Session) -> None:
        """The session's first signed message came: it is no longer waiting."""
        if self.pending.get(s.state.id) is s:
            del self.pending[s.state.id]

    def go_live(self, s: Session, now: float) -> None:
        """The session serves from now (after any older one of its worker ended)."""
        s.joined = True
        s.state.last_seen = s.state.joined = now
        self.live[s.state.id] = s

    def end(self, wid: str) -> list[str]:
        """Retire a live session; the sender names whose sequences may be forgotten."""
        s = self.live.pop(wid, None)
        if s is None:
            return []
        s.retired = True
        self.retired[s.tag] = s
        if len(self.retired) <= self.max_retired:
            return []
        tag, old = self.retired.popitem(last=False)
        self.by_tag.pop(tag, None)
        return [sender_name(old.state.id, tag, channel) for channel in SEQUENCED_CHANNELS]

    def expire(self, now: float) -> int:
        """Drop pending sessions past their time; how many went."""
        gone = [wid for wid, s in self.pending.items() if now > s.expires]
        for wid in gone:
            # Hello answered, but no signed word since: a replay, or a
            # worker that could not reach the result port.
            s = self.pending.pop(wid)
            self.by_tag.pop(s.tag, None)
        return len(gone)
