"""Shared-memory segments: large buffers between a controller and its local workers.

On a session that both ends agreed to carry through shared memory (a local
worker on the private ipc folder, buffers signed by length only), an
out-of-band buffer of :data:`SEGMENT_THRESHOLD` bytes or more does not go
through the socket. The sender writes it into a segment of its pool (a file
in ``/dev/shm``, mode 0600, a name under the session's prefix with 96
random bits), and the message carries an empty frame in its place; the
header's ``segments`` entry lists ``[frame, name, size]`` for each. The
header is signed like any other, so the names and sizes are; the bytes in
the segment count as an out-of-band buffer on a protected link does (signed
by length only, docs/protocol.md "Buffers on protected links"): nothing but
this user's processes can write them.

Lifetimes: the receiver opens the segment, checks owner, mode and size and
maps it read-only, *leaving its name in place*; when the last view of it
goes, it says so in a later message's header (``shm_freed``), and the
writer reuses the segment for another message. So names live as long as
the session: a writer removes a segment only when its pool holds too many
idle ones, or when its end of the session closes. What is left (a session
whose worker was killed, a message dropped) is all under the controller's
prefix, which the controller sweeps when a session ends and when it closes
(``controller/segments.py``); a controller killed with SIGKILL has its
segments swept by the next controller to start on the host.

This module is the protocol's one contact with the operating system: the
pure parts (names, the header entry, their checks) and the few system calls
that write, map and remove a segment sit together so that both ends use the
same rules.
"""

from __future__ import annotations

import mmap
import os
import re
import secrets
import sys
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

from zmqworkers.errors import DecodeError

SHM_DIR = "/dev/shm"
# Below this a buffer goes through the socket. Measured with scenario g of
# benchmarks/run.py: from 128 KiB segments beat raw pyzmq over ipc; at
# 64 KiB they were slower than the socket (7,000 against 10,900 tasks/s).
SEGMENT_THRESHOLD = 128 * 1024
# Every segment name starts with this, then its controller's pid namespace and pid.
ROOT_PREFIX = "zmqw-"
HEADER_KEY = "segments"
FREED_KEY = "shm_freed"
# Spans of segments the receiver itself wrote: a result that is (a view of)
# the task's own input goes back as a reference, not as a copy.
LENT_KEY = "shm_lent"
HEADER_KEYS = frozenset((HEADER_KEY, FREED_KEY, LENT_KEY))
# Idle segments a pool keeps for reuse, beyond which it removes them.
MAX_IDLE_SEGMENTS = 16
MAX_IDLE_BYTES = 512 * 1024 * 1024
# Mappings of the peer's segments a receiver keeps (its pool's idle ones, and
# some busy).
MAX_MAPPED = 32
# zmqw-<pid namespace>.<controller pid>-<engine token>-<session>-<random>
_NAME = re.compile(r"zmqw-[0-9]+\.[0-9]+-[0-9a-f]+-[0-9a-f]+-[0-9a-f]+\Z")
_PREFIX = re.compile(r"zmqw-[0-9]+\.[0-9]+-[0-9a-f]+-[0-9a-f]+-\Z")
MAX_SEGMENTS = 4096
# Bytes of a header's envelope (64 KiB in all, protocol/messages.py) that
# the names said freed may take, and those the segment and lent entries may
# take. With a packed payload's layout (protocol/serialize.py) they leave
# room for the rest of the header: a larger envelope is refused whole by the
# receiver. Names beyond it wait for the next message; buffers beyond it go
# through the socket.
FREED_BUDGET = 16 * 1024
ENTRIES_BUDGET = 16 * 1024
# msgpack's cost of a name beyond its characters (str8), and of an entry
# beyond its name (a list and up to three 9-byte numbers).
_NAME_COST = 2
_ENTRY_COST = 30
_MAX_NAME = 160  # longer is refused (_name_ok)


class Frames(list):  # type: ignore[type-arg]
    """A message's frames, some of whose buffers went to segments.

    ``stashed`` counts their bytes, which the size limit counts as if they
    had travelled in the message; a sender that does not send after all
    hands ``names`` back to ``link``, and puts the peer's names its header
    says freed (``freed``, ``late``) back in their queues (:func:`release`).
    """

    stashed: int = 0
    names: tuple[str, ...] = ()
    freed: tuple[str, ...] = ()
    late: tuple[str, ...] = ()
    link: SegmentLink | None = None
    # Buffers sent back by reference: alive until the message is sent.
    kept: tuple[Any, ...] = ()


def owner_prefix(pid: int | None = None) -> str:
    """``zmqw-<pid namespace>.<pid>-``: the start of a controller's segment names.

    The pid namespace is in it because containers that share one
    ``/dev/shm`` (the containers of one pod) each number their own
    processes: a pid that does not run here may run there, so only a
    controller of the same namespace may judge a name's owner gone.
    """
    return f"{ROOT_PREFIX}{_pid_namespace()}.{os.getpid() if pid is None else pid}-"


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def available() -> bool:
    """Whether this host has POSIX shared memory as files (Linux)."""
    return sys.platform.startswith("linux") and os.access(SHM_DIR, os.W_OK | os.X_OK)


def valid_prefix(prefix: object) -> bool:
    """Whether ``prefix`` is a session prefix as a controller makes them."""
    return isinstance(prefix, str) and len(prefix) < 80 and bool(_PREFIX.match(prefix))


class _Segment:
    __slots__ = ("name", "mapped", "busy", "held")

    def __init__(self, name: str, mapped: mmap.mmap) -> None:
        self.name = name
        self.mapped = mapped
        self.busy = True  # lent to the peer, which has not said it let go
        self.held = 0  # views of it handed out here (the peer sent it back)

    @property
    def idle(self) -> bool:
        return not self.busy and not self.held


class SegmentLink:
    """One session's segments, as seen from one end.

    The segments this end writes form a pool: each is created once, mapped
    once, and written again whenever the peer says (``shm_freed`` in a later
    message's header) that the last view of it has gone on its side. Fresh
    tmpfs pages cost more than the copy itself (zeroed on allocation, freed
    after), so reuse is what makes shared memory beat the socket. Segments
    the peer wrote are mapped read-only for each message; when the last
    view of such a mapping goes, its name is queued to be said back.

    Used by one thread per end (the engine's, or the worker's loop), but
    views die in any thread: the queue of freed names is a deque.
    """

    def __init__(self, prefix: str) -> None:
        if not valid_prefix(prefix):
            raise ValueError(f"not a segment prefix: {prefix!r}")
        self.prefix = prefix
        self._pool: dict[str, _Segment] = {}
        self._freed: deque[str] = deque()  # the peer's segments whose views went
        # Our segments whose views handed out here went (any thread appends).
        self._unheld: deque[str] = deque()
        # The peer's segments, mapped read-only, most recently used last,
        # with the address each is mapped at.
        self._mapped: OrderedDict[str, tuple[mmap.mmap, int]] = OrderedDict()
        # The peer's segments this end sent back by reference, and those of
        # them whose views have gone since. Their names are said back only
        # by the thread that sent the reference, so on the same socket and
        # after it: said by another (a heartbeat's socket), the name could
        # overtake the reference, and the peer reuse the segment under it.
        self._referenced: set[str] = set()
        self._freed_late: deque[str] = deque()
        self._ref_thread: int | None = None
        self.closed = False

    # -- sending --------------------------------------------------------------

    def stash(
        self, header: Any, body: Sequence[Any]
    ) -> tuple[Any, list[Any], int, list[str], list[Any]]:
        """Move ``body``'s large buffers (frame 1 on) to segments.

        Returns the header (with ``segments`` and ``shm_lent`` entries),
        the body with empty frames in their place, the bytes moved, the
        names used and the buffers sent back by reference (a view of a
        segment the peer wrote: a result that is its task's input), which
        must live until the message is sent. Nothing moves when the header
        is not a map, or when the host has no room (a full ``/dev/shm``):
        the socket carries them as before. So do the buffers whose entries
        would take the header past :data:`ENTRIES_BUDGET`.
        """
        if not isinstance(header, dict) or self.closed:
            return header, list(body), 0, [], []
        out = list(body)
        entries: list[list[Any]] = []
        lent: list[list[Any]] = []
        kept: list[Any] = []
        names: list[str] = []
        moved = 0
        room = ENTRIES_BUDGET
        try:
            for i in range(1, len(body)):
                view = memoryview(body[i])
                if view.nbytes < SEGMENT_THRESHOLD:
                    continue
                if room < _ENTRY_COST + _MAX_NAME:
                    break  # the rest through the socket: the header is full
                data = view.cast("B") if view.format != "B" or view.ndim != 1 else view
                span = self._peer_span(data)
                if span is not None:
                    # Already in shared memory, in a segment of the peer's
                    # that a view here holds: no copy, a reference.
                    self._referenced.add(span[0])
                    self._ref_thread = threading.get_ident()
                    lent.append([i, span[0], span[1], data.nbytes])
                    kept.append(data)
                    room -= _ENTRY_COST + len(span[0])
                else:
                    seg = self._free_segment(data.nbytes)
                    names.append(seg.name)
                    memoryview(seg.mapped)[: data.nbytes] = data
                    entries.append([i, seg.name, data.nbytes])
                    room -= _ENTRY_COST + len(seg.name)
                out[i] = b""
                moved += data.nbytes
        except (OSError, ValueError):
            self.give_back(names)
            return header, list(body), 0, [], []
        if entries:
            header = {**header, HEADER_KEY: entries}
        if lent:
            header = {**header, LENT_KEY: lent}
        return header, out, moved, names, kept

    def _peer_span(self, data: memoryview) -> tuple[str, int] | None:
        """(name, offset) when ``data`` lies in a mapping of a peer's segment."""
        np = sys.modules.get("numpy")
        if np is None or not self._mapped or not data.c_contiguous:
            return None
        start = np.frombuffer(data, dtype=np.uint8).__array_interface__["data"][0]
        end = start + data.nbytes
        for name, (mapped, base) in self._mapped.items():
            if base <= start and end <= base + len(mapped):
                return name, start - base
        return None

    def say_freed(self, header: Any) -> tuple[Any, list[str], list[str]]:
        """``header`` with the peer's segments whose views went here, if any.

        Also returns the names said, those let go promptly and those sent
        back by reference before (``late``): a sender that does not send
        after all puts them back (:meth:`put_back`). At most
        :data:`FREED_BUDGET` bytes of names: the rest wait, in order, for
        the next message.
        """
        late_due = bool(self._freed_late) and threading.get_ident() == self._ref_thread
        if not (self._freed or late_due) or not isinstance(header, dict):
            return header, [], []
        freed: list[str] = []
        late: list[str] = []
        room = FREED_BUDGET
        # A worker's heartbeat thread says them too: popleft alone is atomic.
        while room >= _MAX_NAME + _NAME_COST:
            try:
                name = self._freed.popleft()
            except IndexError:
                break
            freed.append(name)
            room -= len(name) + _NAME_COST
        while late_due and room >= _MAX_NAME + _NAME_COST:
            try:
                name = self._freed_late.popleft()
            except IndexError:
                break
            self._referenced.discard(name)
            late.append(name)
            room -= len(name) + _NAME_COST
        if not (freed or late):
            return header, [], []
        return {**header, FREED_KEY: freed + late}, freed, late

    def put_back(self, freed: Sequence[str], late: Sequence[str]) -> None:
        """Names :meth:`say_freed` took for a message not sent: said in a later one."""
        self._freed.extendleft(reversed(freed))
        if late:
            self._referenced.update(late)
            self._freed_late.extendleft(reversed(late))

    def _let_go(self, name: str) -> None:
        # The last view of a peer's segment went (in any thread).
        (self._freed_late if name in self._referenced else self._freed).append(name)

    def _free_segment(self, size: int) -> _Segment:
        self._count_unheld()
        # The smallest idle segment that holds it without wasting half.
        best = None
        for seg in self._pool.values():
            cap = len(seg.mapped)
            if seg.idle and size <= cap <= 2 * size:
                if best is None or cap < len(best.mapped):
                    best = seg
        if best is not None:
            best.busy = True
            return best
        name = self.prefix + secrets.token_hex(12)
        path = os.path.join(SHM_DIR, name)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            # Allocated now, not at the first write: a full /dev/shm (64 MiB
            # in a default container) then fails here with ENOSPC, and the
            # buffer takes the socket, where writing into a sparse mapping
            # would kill the process with SIGBUS.
            os.posix_fallocate(fd, 0, size)
            mapped = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            _unlink(path)
            raise
        os.close(fd)
        seg = self._pool[name] = _Segment(name, mapped)
        self._trim()
        return seg

    def give_back(self, names: Sequence[str]) -> None:
        """Segments of ours free again: their message was not sent, or the peer let go."""
        for name in names:
            seg = self._pool.get(name)
            if seg is not None:
                seg.busy = False
        self._count_unheld()
        self._trim()

    def _count_unheld(self) -> None:
        while self._unheld:
            seg = self._pool.get(self._unheld.popleft())
            if seg is not None:
                seg.held -= 1

    def _trim(self) -> None:
        idle = [s for s in self._pool.values() if s.idle]
        excess = sum(len(s.mapped) for s in idle) - MAX_IDLE_BYTES
        for seg in idle:
            if excess <= 0 and len(idle) <= MAX_IDLE_SEGMENTS:
                break
            excess -= len(seg.mapped)
            self._drop(seg)
            idle.remove(seg)

    def _drop(self, seg: _Segment) -> None:
        del self._pool[seg.name]
        _unlink(os.path.join(SHM_DIR, seg.name))
        try:
            seg.mapped.close()
        except BufferError:
            pass  # a view of it is still out (a send in flight): freed with it

    # -- receiving ------------------------------------------------------------

    def receive(self, header: dict[str, Any], views: list[Any]) -> list[Any]:
        """``views`` (payload frames) with the named segments mapped; the freed taken.

        Called only on a signed message. Raises :class:`DecodeError` for a
        name outside the session, or a segment that is not this user's,
        private and at least the size named.
        """
        out = list(views)
        freed = header.get(FREED_KEY)
        if freed is not None and not isinstance(freed, list):
            raise DecodeError("malformed", "shm_freed is not a list")
        try:
            # Held before the freed are taken: a reference keeps its
            # segment from reuse whatever the same header frees.
            self._receive_lent(header.get(LENT_KEY), out)
            self._receive_segments(header.get(HEADER_KEY), out)
        finally:
            # Taken even when the rest is refused: the peer said them once,
            # and will not again.
            if freed:
                self.give_back([n for n in freed if isinstance(n, str)])
        return out

    def _receive_segments(self, entries: Any, out: list[Any]) -> None:
        """Put read-only views of the peer's segments named in ``entries`` into ``out``."""
        if entries is None:
            return
        if not isinstance(entries, list) or len(entries) > MAX_SEGMENTS:
            raise DecodeError("malformed", "segments is not a short list")
        for entry in entries:
            if not _entry_ok(entry, len(out)) or not entry[1].startswith(self.prefix):
                raise DecodeError("malformed", f"segment entry {entry!r} is outside the session")
            i, name, size = entry
            if memoryview(out[i]).nbytes:
                raise DecodeError("malformed", f"frame {i} is not empty where a segment goes")
            try:
                out[i] = self._map(name, size)
            except (OSError, ValueError) as exc:
                raise DecodeError("malformed", f"segment {name} cannot be used ({exc})") from exc

    def _receive_lent(self, lent: Any, out: list[Any]) -> None:
        """Put read-only views of our own segments, sent back by reference, into ``out``.

        Only a segment lent to the peer and not yet let go: the peer holds
        a view of it, so nothing here has written it since.
        """
        if lent is None:
            return
        if not isinstance(lent, list) or len(lent) > MAX_SEGMENTS:
            raise DecodeError("malformed", "shm_lent is not a short list")
        for entry in lent:
            if not _lent_ok(entry, len(out)):
                raise DecodeError("malformed", f"lent entry {entry!r} is malformed")
            i, name, offset, size = entry
            seg = self._pool.get(name)
            if seg is None or not seg.busy or offset + size > len(seg.mapped):
                raise DecodeError("malformed", f"{name} is not a segment lent to the peer")
            if memoryview(out[i]).nbytes:
                raise DecodeError("malformed", f"frame {i} is not empty where a segment goes")
            out[i] = self._hold(seg, offset, size)

    def _hold(self, seg: _Segment, offset: int, size: int) -> Any:
        """A read-only view of ``size`` bytes of our segment ``seg`` at ``offset``.

        The segment is not written again until this view has gone.
        """
        # Through a read-only memoryview: over the writable mapping itself,
        # numpy would let the user turn a result's WRITEABLE flag back on.
        view: Any = memoryview(seg.mapped)[offset : offset + size].toreadonly()
        np = sys.modules.get("numpy")
        if np is not None:
            view = np.frombuffer(view, dtype=np.uint8)
        seg.held += 1
        weakref.finalize(view, self._unheld.append, seg.name)
        return view

    def _map(self, name: str, size: int) -> Any:
        """A read-only view of ``size`` bytes of the peer's segment ``name``.

        When the last view of it goes, the name is queued to be said back.
        With numpy loaded, the segment is mapped once and kept (mapping and
        unmapping 8 MiB with its page faults cost more than the copy the
        segment saves), and each message gets a uint8 array over it, whose
        end is watched. Without numpy, each message maps it afresh.
        """
        np = sys.modules.get("numpy")
        if np is None:
            fresh = self._open(name, size)
            weakref.finalize(fresh, self._let_go, name)
            return memoryview(fresh)
        known = self._mapped.get(name)
        if known is None or len(known[0]) < size:
            mapped = self._open(name, size)
            whole = np.frombuffer(mapped, dtype=np.uint8)
            self._mapped[name] = (mapped, whole.__array_interface__["data"][0])
            del whole
            while len(self._mapped) > MAX_MAPPED:
                # The peer's pool reuses its segments: the oldest mapping
                # is most likely one it has removed. Views keep theirs.
                self._mapped.popitem(last=False)
        else:
            mapped = known[0]
            self._mapped.move_to_end(name)
        view = np.frombuffer(mapped, dtype=np.uint8, count=size)
        weakref.finalize(view, self._let_go, name)
        return view

    def _open(self, name: str, size: int) -> mmap.mmap:
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                raise ValueError("not this user's private segment")
            if st.st_size < size:
                raise ValueError(f"{st.st_size} bytes, the message says {size}")
            # Read-only: a task's input and a result are views the writer
            # may reuse once this view has gone, never before.
            return mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Remove this end's segments (views still out keep their memory)."""
        self.closed = True
        for seg in list(self._pool.values()):
            self._drop(seg)
        self._mapped.clear()


def declared_size(header: Any) -> int:
    """The bytes a header's segments claim (0 if it names none or is malformed)."""
    if not isinstance(header, dict):
        return 0
    total = 0
    for key, n in ((HEADER_KEY, 3), (LENT_KEY, 4)):
        entries = header.get(key)
        if isinstance(entries, list):
            total += sum(
                e[-1]
                for e in entries
                if isinstance(e, list) and len(e) == n and isinstance(e[-1], int) and e[-1] > 0
            )
    return total


def _name_ok(name: Any) -> bool:
    return isinstance(name, str) and len(name) < _MAX_NAME and bool(_NAME.match(name))


def _whole(value: Any) -> bool:
    # An integer, not a bool: msgpack keeps the two apart, isinstance does not.
    return isinstance(value, int) and not isinstance(value, bool)


def _entry_ok(entry: Any, n_views: int) -> bool:
    return (
        isinstance(entry, list)
        and len(entry) == 3
        and _whole(entry[0])
        and 1 <= entry[0] < n_views
        and _name_ok(entry[1])
        and _whole(entry[2])
        and entry[2] > 0
    )


def _lent_ok(entry: Any, n_views: int) -> bool:
    return (
        isinstance(entry, list)
        and len(entry) == 4
        and _whole(entry[0])
        and 1 <= entry[0] < n_views
        and _name_ok(entry[1])
        and _whole(entry[2])
        and _whole(entry[3])
        and entry[2] >= 0
        and entry[3] > 0
    )


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def remove(names: Sequence[str]) -> None:
    """Remove segments this process wrote and will not send."""
    for name in names:
        _unlink(os.path.join(SHM_DIR, name))


def remove_owned(names: Sequence[str]) -> None:
    """Remove the named segments that are this user's (a refused message's)."""
    uid = os.getuid()
    for name in names:
        path = os.path.join(SHM_DIR, name)
        try:
            if os.lstat(path).st_uid == uid:
                os.unlink(path)
        except OSError:
            pass


def sweep(prefix: str) -> int:
    """Remove every segment of this user under ``prefix``; how many there were."""
    if not prefix.startswith(ROOT_PREFIX):
        raise ValueError(f"not a segment prefix: {prefix!r}")
    try:
        names = [n for n in os.listdir(SHM_DIR) if n.startswith(prefix)]
    except OSError:
        return 0
    before = len(names)
    remove_owned(names)
    return before


def release(frames: Sequence[Any]) -> None:
    """Undo what building ``frames`` took: they will not be sent.

    Their segments are free again, and the names their header said freed
    go back to be said in a later message.
    """
    if isinstance(frames, Frames) and frames.link is not None:
        frames.link.give_back(frames.names)
        frames.link.put_back(frames.freed, frames.late)
