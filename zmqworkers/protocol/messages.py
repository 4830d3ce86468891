"""Message kinds and their framing.

A message is a list of ZeroMQ frames::

    [signature, envelope, payload_pickle?, buffer, buffer, ...]

- ``signature``: HMAC-SHA256 over every following frame, each prefixed by its
  length (so frames cannot be re-cut without detection).
- ``envelope``: msgpack ``[version, kind, sender, seq, header, n_payload]``.
  ``header`` holds plain msgpack data (ids, counts, host names); it is the
  only part read before the signature is checked, and msgpack never runs code.
  The version and the sender are read first: the version for a clear error
  across releases, the sender to pick the key of its session.
- payload frames (``n_payload`` of them): a pickle protocol 5 stream and its
  out-of-band buffers, unpickled only after the signature matched.

``decode`` raises :class:`~zmqworkers.errors.DecodeError` (or its subclass
``ProtocolVersionError``) for anything it refuses, and nothing else.

Buffers on protected links: where nothing on the path can change bytes in
transit (loopback and ipc, which only the kernel carries, or CURVE, whose
boxes are authenticated), the two sides may agree in HELLO and WELCOME that
out-of-band buffers enter the signature by their length only. The envelope
and the pickle stream (the only frames that can name code) are always signed
in full; see :class:`SessionKey`.

Sessions: only HELLO and its answer (WELCOME or REFUSED) are signed with the
shared key itself. Everything after is signed with a key derived from the
shared key and two fresh nonces, one from each side (:func:`derive_key`), so
a message captured in one session is refused in every other one, even by a
restarted controller with the same key.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from zmqworkers.errors import (
    ConfigurationError,
    DecodeError,
    MessageTooLarge,
    ProtocolVersionError,
)
from zmqworkers.protocol import segments, serialize

# 2: session keys (nonces in HELLO and WELCOME), per-session routing ids.
# 3: buffers signed by length on protected links; BLAKE3 digests from 16 KiB.
PROTOCOL_VERSION = 3

SIGNATURE_SIZE = 32
MAX_ENVELOPE_SIZE = 64 * 1024
MAX_SENDER_LENGTH = 256
NONCE_SIZE = 16
# Default bound on a whole message (all its frames together). Controller and
# worker each take it as an option and tell the other in the handshake; each
# sends nothing larger than the smaller of the two (see check_size). ZeroMQ's
# ZMQ_MAXMSGSIZE, set to the same number, bounds each frame as it arrives: a
# backstop that closes the connection, so it must never be what catches a
# message, and the decoder checks the total.
DEFAULT_MAX_MESSAGE_SIZE = 2 * 1024**3
# The smallest limit that still leaves room for a full envelope: below it
# even a hello or a heartbeat could be refused, and every job would hang.
MIN_MESSAGE_SIZE = MAX_ENVELOPE_SIZE


def check_limit(value: object, what: str = "max_message_size") -> int:
    """``value`` as a message size limit; ConfigurationError (a ValueError) if unusable."""
    if not isinstance(value, int) or isinstance(value, bool) or value < MIN_MESSAGE_SIZE:
        raise ConfigurationError(
            f"{what} must be a whole number of bytes >= {MIN_MESSAGE_SIZE} "
            f"(64 KiB, room for a message's envelope), not {value!r}"
        )
    return value


def session_limit(ours: int, theirs: object) -> int:
    """The largest message either side of a session may send: the smaller limit.

    ``theirs`` is what the peer said in the handshake; a peer that said
    nothing (or nonsense) leaves ours.
    """
    if isinstance(theirs, int) and not isinstance(theirs, bool) and theirs >= MIN_MESSAGE_SIZE:
        return min(ours, theirs)
    return ours


def frames_size(frames: Sequence[Any]) -> int:
    """The bytes of a message's frames together, as the limit counts them.

    Buffers that went to shared-memory segments count as if they travelled.
    """
    return sum(memoryview(f).nbytes for f in frames) + getattr(frames, "stashed", 0)


class Kind(enum.IntEnum):
    """What a message is. The numbers are part of the protocol."""

    HELLO = 1  # worker -> controller (task channel): who I am
    WELCOME = 2  # controller -> worker: where the other channels are
    FUNC = 3  # controller -> worker: a function spec, sent once per worker
    TASKS = 4  # controller -> worker: a batch of (task id, argument)
    RESULTS = 5  # worker -> controller: a batch of (task id, ok, value)
    HEARTBEAT = 6  # both ways: I am alive
    STOP = 7  # controller -> worker: finish the current call, then leave
    BYE = 8  # worker -> controller: I am leaving, these tasks go back
    MESSAGE = 9  # worker -> controller: a text for the user (sig_message_from_worker)
    REFUSED = 10  # controller -> worker: you may not join, and why
    INFO = 11  # client -> controller (task channel) and back: the worker table
    CANCEL = 12  # controller -> worker: drop these prefetched tasks, unrun
    INTERRUPT = 13  # controller -> workers (broadcast): this worker's process must end now


@dataclass(slots=True)
class Message:
    """One decoded message. ``payload`` is the unpickled object or None."""

    kind: Kind
    sender: str
    seq: int
    header: Any = None
    payload: Any = None
    has_payload: bool = False
    nbytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# Frames at least this large enter the HMAC as a keyed BLAKE3 digest of
# themselves instead of byte by byte: HMAC-SHA256 runs at about 1.7 GB/s
# here, keyed BLAKE3 at about 7 GB/s on one core from 16 KiB up, and the HMAC
# still covers every byte through the digest. Below it, the extra call costs
# more than it saves.
LARGE_FRAME = 16 * 1024


# Frames from this index on (of those the signature covers: envelope, pickle
# stream, buffers) are out-of-band buffers: plain data, never code.
FIRST_BUFFER = 2
# A header's layout of a packed payload (protocol/serialize.py).
PACKED_KEY = "packed"


@dataclass(frozen=True, slots=True)
class SessionKey:
    """The key of one session, and whether it hashes out-of-band buffers.

    ``sign_buffers=False`` is for links that already rule out changes in
    transit (loopback, ipc, CURVE), agreed by both sides in the handshake:
    out-of-band buffers then enter the signature by their length only, which
    saves a pass over every array on each side.
    """

    secret: bytes
    sign_buffers: bool = True
    # This end's shared-memory segments of the session (None: none): a
    # local worker's session, buffers signed by length only
    # (protocol/segments.py).
    segments: segments.SegmentLink | None = field(default=None, compare=False)


Key = bytes | SessionKey


def _frame_key(key: bytes) -> bytes:
    return hmac.new(key, b"zmqworkers/frame-digest", hashlib.sha256).digest()


def _mac(key: Key, frames: Sequence[Any]) -> bytes:
    if isinstance(key, SessionKey):
        secret, sign_buffers = key.secret, key.sign_buffers
    else:
        secret, sign_buffers = key, True
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    frame_key = None
    for i, frame in enumerate(frames):
        view = memoryview(frame)
        n = view.nbytes
        mac.update(n.to_bytes(8, "little"))
        if i >= FIRST_BUFFER and not sign_buffers:
            mac.update(b"length only")  # the link protects these bytes
        elif n >= LARGE_FRAME:
            import blake3  # only where large frames travel

            if frame_key is None:
                frame_key = _frame_key(secret)
            # Releases the GIL while it hashes, so other threads go on.
            mac.update(b"blake3:" + blake3.blake3(view, key=frame_key).digest())
        else:
            mac.update(view)
    return mac.digest()


def derive_key(key: bytes, label: bytes, *parts: bytes) -> bytes:
    """A key for one purpose and session, derived from the shared ``key``.

    Each part is length-prefixed, so no two different lists of parts give
    the same key.
    """
    mac = hmac.new(key, b"zmqworkers/" + label, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(len(part).to_bytes(4, "little"))
        mac.update(part)
    return mac.digest()


KeyLookup = Callable[[str], Key]


def encode(
    kind: Kind,
    sender: str,
    seq: int,
    key: Key,
    header: Any = None,
    payload: Any = None,
    *,
    has_payload: bool = False,
    by_value: bool = False,
) -> list[Any]:
    """Build the signed frames of one message.

    ``payload`` is pickled only when ``has_payload`` is true (so ``None`` can
    be a payload). Large buffers in it become frames of their own, uncopied;
    in a session with segments, mid-size ones are packed (:func:`packs`).
    """
    if not has_payload:
        return encode_frames(kind, sender, seq, key, header, [])
    pack = isinstance(header, dict) and packs(key)
    body = serialize.dumps(payload, by_value=by_value, pack=pack)
    return encode_frames(kind, sender, seq, key, header, body)


def packs(key: Key) -> bool:
    """Whether payloads of this session pack their mid-size buffers.

    Only where the session has shared-memory segments: both ends then are
    the same install (a controller and its local workers), and the packed
    frame goes through a segment.
    """
    return isinstance(key, SessionKey) and key.segments is not None and not key.sign_buffers


def encode_frames(
    kind: Kind, sender: str, seq: int, key: Key, header: Any, body: Sequence[Any]
) -> list[Any]:
    """Like :func:`encode` with the payload already serialized (``dumps``).

    In a session with segments, large buffers go to shared memory: the
    frames returned are then :class:`~.segments.Frames`, which count them.
    Raises :class:`~zmqworkers.errors.MessageTooLarge` for a header over
    the envelope's limit, which the receiver would refuse whole.
    """
    moved = 0
    names: list[str] = []
    kept: list[Any] = []
    freed: list[str] = []
    late: list[str] = []
    if isinstance(body, serialize.Packed):
        header = {**header, PACKED_KEY: body.layout}
    link = key.segments if isinstance(key, SessionKey) and not key.sign_buffers else None
    try:
        if link is not None:
            header, freed, late = link.say_freed(header)
            if len(body) > 1:
                header, body, moved, names, kept = link.stash(header, body)
        envelope = _envelope(kind, sender, seq, header, len(body))
    except BaseException:
        # Whatever failed (a body that is no buffer, memory), nothing goes
        # out: the names taken to be said freed wait for a later message.
        if link is not None:
            link.put_back(freed, late)
            link.give_back(names)
        raise
    if len(envelope) > MAX_ENVELOPE_SIZE and link is not None:
        # The receiver would refuse it whole, and what it carries with it.
        # The names said freed wait for a later message; and if the header
        # is too large without them, its segments are free again.
        if freed or late:
            link.put_back(freed, late)
            freed, late = [], []
            header = {k: v for k, v in header.items() if k != segments.FREED_KEY}
            envelope = _envelope(kind, sender, seq, header, len(body))
        if len(envelope) > MAX_ENVELOPE_SIZE:
            link.give_back(names)
    if len(envelope) > MAX_ENVELOPE_SIZE:
        raise MessageTooLarge(
            f"a {kind.name} message's header takes {len(envelope)} bytes, over the "
            f"limit of {MAX_ENVELOPE_SIZE} bytes on a message's envelope",
            len(envelope),
            MAX_ENVELOPE_SIZE,
        )
    frames = [envelope, *body]
    if not (moved or freed or late):
        return [_mac(key, frames), *frames]
    out = segments.Frames([_mac(key, frames), *frames])
    out.stashed, out.names, out.link = moved, tuple(names), link
    out.freed, out.late, out.kept = tuple(freed), tuple(late), tuple(kept)
    return out


def _envelope(kind: Kind, sender: str, seq: int, header: Any, n_payload: int) -> bytes:
    return msgpack.packb(  # type: ignore[no-any-return]
        [PROTOCOL_VERSION, int(kind), sender, seq, header, n_payload], use_bin_type=True
    )


def encode_unsigned(kind: Kind, sender: str, seq: int, header: Any = None) -> list[Any]:
    """The frames of a message that carries no valid signature (all zeros).

    For answers to input nobody authenticated, such as a hello in another
    protocol version: a peer of another version reads only the envelope's
    version, which :func:`decode` checks before the signature, and a peer of
    this version drops it as unsigned. Signing such an answer with the
    shared key would hand whoever sent the input a message signed by the
    controller to replay.
    """
    envelope = msgpack.packb(
        [PROTOCOL_VERSION, int(kind), sender, seq, header, 0], use_bin_type=True
    )
    return [bytes(SIGNATURE_SIZE), envelope]


def library_compatible(ours: str, theirs: str) -> bool:
    """Whether two zmqworkers releases may work together.

    Same major version (and, before 1.0, the same minor version): releases
    that differ only below that keep the protocol and the task semantics.
    """

    def head(v: str) -> tuple[str, ...]:
        parts = v.split(".")
        return tuple(parts[:2]) if parts[0] == "0" else tuple(parts[:1])

    return head(ours) == head(theirs)


def peek_version(frames: Sequence[Any]) -> int | None:
    """The protocol version a message claims, or None if unreadable."""
    try:
        env = msgpack.unpackb(frames[1], raw=False)
        return int(env[0])
    except Exception:
        return None


def decode(
    frames: Sequence[Any],
    key: Key | KeyLookup,
    *,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    unpickle: bool = True,
) -> Message:
    """Check and decode the frames of one message.

    ``key`` is the key, or a function of the sender that returns its key (or
    raises :class:`DecodeError` for a sender it does not know).

    Order matters: sizes, then the envelope (msgpack, safe) for a clear
    version error and the sender, then the signature, and only then the pickle.
    """
    try:
        n_frames = len(frames)
    except TypeError as exc:
        raise DecodeError("malformed", "frames are not a sequence") from exc
    if n_frames < 2:
        raise DecodeError("malformed", f"{n_frames} frame(s), need at least 2")
    views = []
    total = 0
    for frame in frames:
        try:
            view = memoryview(frame)
        except TypeError as exc:
            raise DecodeError("malformed", "frame is not a buffer") from exc
        total += view.nbytes
        views.append(view)
    if total > max_size:
        raise DecodeError("size", f"{total} bytes exceeds the limit of {max_size}")
    sig, env_frame = views[0], views[1]
    if sig.nbytes != SIGNATURE_SIZE:
        raise DecodeError("signature", f"signature frame of {sig.nbytes} bytes")
    if env_frame.nbytes > MAX_ENVELOPE_SIZE:
        raise DecodeError("size", f"envelope of {env_frame.nbytes} bytes")
    try:
        env = msgpack.unpackb(env_frame, raw=False, strict_map_key=True)
    except Exception as exc:
        raise DecodeError("malformed", f"envelope is not msgpack ({exc})") from exc
    if not isinstance(env, list) or len(env) != 6:
        raise DecodeError("malformed", "envelope is not a list of 6")
    version, kind_no, sender, seq, header, n_payload = env
    if not _is_int(version):
        raise DecodeError("malformed", "version is not an integer")
    if version != PROTOCOL_VERSION:
        raise ProtocolVersionError(version, PROTOCOL_VERSION)
    if not isinstance(sender, str) or not 0 < len(sender) <= MAX_SENDER_LENGTH:
        raise DecodeError("malformed", "sender is not a short string")
    if not (_is_int(seq) and _is_int(kind_no) and _is_int(n_payload)):
        raise DecodeError("malformed", "kind, seq or payload count is not an integer")
    if n_payload != len(views) - 2:
        raise DecodeError("malformed", f"declares {n_payload} payload frames, has {len(views) - 2}")
    if total + segments.declared_size(header) > max_size:
        raise DecodeError("size", f"segments take it over the limit of {max_size}")
    secret = key(sender) if callable(key) else key
    if not hmac.compare_digest(bytes(sig), _mac(secret, views[1:])):
        raise DecodeError("signature", "signature does not match the key")
    try:
        return _decode_signed(views, secret, kind_no, sender, seq, header, total, unpickle)
    except DecodeError as exc:
        # Signed: the kind and number are the sender's, so the receiver may
        # say it got this message though it cannot use it (a segment it
        # cannot map, a payload that does not unpickle), and the sender
        # learns that what it carried never arrived.
        if exc.seq is None:
            exc.kind, exc.seq = kind_no, seq
        raise


def _decode_signed(
    views: list[memoryview],
    secret: Key,
    kind_no: int,
    sender: str,
    seq: int,
    header: Any,
    total: int,
    unpickle: bool,
) -> Message:
    """The rest of :func:`decode`, for a message whose signature checked."""
    out: list[Any] = list(views)
    if isinstance(header, dict) and not header.keys().isdisjoint(segments.HEADER_KEYS):
        # Signed: the names are the sender's. Their bytes count as buffers
        # on a protected link, so only such a session may use them.
        link = secret.segments if isinstance(secret, SessionKey) else None
        if link is None or secret.sign_buffers:  # type: ignore[union-attr]
            raise DecodeError("unexpected", "segments in a session that did not agree on them")
        out[2:] = link.receive(header, out[2:])
    # Signed by a holder of the key from here on: checks below guard
    # against bugs and version skew, not against forgery.
    try:
        kind = Kind(kind_no)
    except ValueError as exc:
        raise DecodeError("kind", f"unknown message kind {kind_no!r}") from exc
    n_payload = len(out) - 2
    msg = Message(kind, sender, seq, header, has_payload=n_payload > 0, nbytes=total)
    layout = header.get(PACKED_KEY) if isinstance(header, dict) else None
    if layout is not None and not (isinstance(layout, list) and packs(secret)):
        raise DecodeError("unexpected", "a packed payload in a session that does not pack")
    if n_payload and unpickle:
        try:
            msg.payload = serialize.loads(out[2:], layout)
        except Exception as exc:
            raise DecodeError("malformed", f"payload does not unpickle ({exc!r})") from exc
    return msg


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ReplayGuard:
    """Refuses a message whose sequence number its sender has used before.

    Every sender numbers its messages from 1 upwards on one socket, and ZeroMQ
    keeps order per connection, so a number at or below the last one seen is a
    replay (or a duplicate). Bounded: the oldest senders are forgotten.
    """

    def __init__(self, max_senders: int = 65536) -> None:
        self._last: OrderedDict[str, int] = OrderedDict()
        self._max = max_senders

    def check(self, sender: str, seq: int) -> None:
        last = self._last.get(sender)
        if last is not None and seq <= last:
            raise DecodeError("replay", f"{sender} sequence {seq} after {last}")
        self._last[sender] = seq
        self._last.move_to_end(sender)
        if len(self._last) > self._max:
            self._last.popitem(last=False)

    def forget(self, sender: str) -> None:
        self._last.pop(sender, None)
