"""Session rules both sides follow: which key signs what, and who a sender is.

A worker opens a session with a hello carrying its nonce; the controller's
welcome carries its own. Everything after is signed with a key derived
from the shared key and both nonces, and sent under the sender name
``<worker id>@<tag>/<channel>``, where ``tag`` is the controller's nonce in
hex and ``channel`` is ``r`` (results), ``hb`` (heartbeats) or ``drain``
(a goodbye sent mid-call). The controller finds the session, and so the key
that checks a message, from the tag alone.
"""

from __future__ import annotations

from zmqworkers.protocol.messages import SessionKey, derive_key
from zmqworkers.protocol.segments import SegmentLink

RESULTS_CHANNEL = "r"
HEARTBEAT_CHANNEL = "hb"
DRAIN_CHANNEL = "drain"
# The channels whose sequence numbers the controller remembers per session.
SEQUENCED_CHANNELS = (RESULTS_CHANNEL, HEARTBEAT_CHANNEL)


def session_key(
    key: bytes,
    worker_nonce: bytes,
    controller_nonce: bytes,
    *,
    sign_buffers: bool,
    segments: str = "",
) -> SessionKey:
    """The key that signs a session's messages, both ways.

    ``segments``: the prefix of the shared-memory segments the session may
    use, only where buffers are not hashed (see protocol/segments.py).
    """
    return SessionKey(
        derive_key(key, b"session", worker_nonce, controller_nonce),
        sign_buffers=sign_buffers,
        segments=SegmentLink(segments) if segments and not sign_buffers else None,
    )


def broadcast_key(key: bytes, pub_nonce: bytes) -> bytes:
    """The key that signs a controller's broadcasts (heartbeats, STOP to all)."""
    return derive_key(key, b"pub", pub_nonce)


def sender_name(worker_id: str, tag: str | None, channel: str) -> str:
    """``<id>@<tag>/<channel>`` in a session, ``<id>/<channel>`` before one."""
    return f"{worker_id}@{tag}/{channel}" if tag else f"{worker_id}/{channel}"


def session_tag(sender: str) -> str:
    """The tag of a sender name (empty if it names no session)."""
    head = sender.partition("/")[0]
    return head.rpartition("@")[2] if "@" in head else ""
