"""The wire protocol: message kinds, framing, signing and payload serialization.

Pure code: nothing here opens a socket, starts a thread or reads a clock.
Sockets meet the protocol at :func:`encode` and :func:`decode`.
"""

from zmqworkers.protocol.messages import (
    PROTOCOL_VERSION,
    Kind,
    Message,
    ReplayGuard,
    SessionKey,
    decode,
    derive_key,
    encode,
    encode_frames,
)
from zmqworkers.protocol.serialize import dumps, loads

__all__ = [
    "PROTOCOL_VERSION",
    "Kind",
    "Message",
    "ReplayGuard",
    "SessionKey",
    "decode",
    "derive_key",
    "dumps",
    "encode",
    "encode_frames",
    "loads",
]
