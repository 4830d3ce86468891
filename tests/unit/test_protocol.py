from __future__ import annotations

import pickle

import msgpack
import numpy as np
import pytest

from zmqworkers.errors import DecodeError, ProtocolVersionError
from zmqworkers.protocol import Kind, ReplayGuard, decode, encode
from zmqworkers.protocol.messages import PROTOCOL_VERSION

KEY = b"k" * 32


def test_round_trip_with_header_and_payload() -> None:
    frames = encode(Kind.TASKS, "ctl", 7, KEY, {"spec": "abc"}, [(1, "x")], has_payload=True)
    msg = decode(frames, KEY)
    assert (msg.kind, msg.sender, msg.seq, msg.header) == (Kind.TASKS, "ctl", 7, {"spec": "abc"})
    assert msg.payload == [(1, "x")]


def test_none_payload_is_a_payload() -> None:
    msg = decode(encode(Kind.RESULTS, "w", 1, KEY, None, None, has_payload=True), KEY)
    assert msg.has_payload and msg.payload is None


def test_large_array_leaves_as_its_own_frame_without_copy() -> None:
    arr = np.arange(64 * 1024 * 1024 // 8, dtype=np.float64)  # 64 MiB
    frames = encode(Kind.TASKS, "ctl", 1, KEY, None, [(1, arr)], has_payload=True)
    # [signature, envelope, pickle, buffer]
    assert len(frames) == 4
    assert len(frames[2]) < 1024, "the array must not be inside the pickle"
    buf = np.frombuffer(frames[3], dtype=np.float64)
    assert np.shares_memory(buf, arr), "the frame must be the array's own memory"
    out = decode(frames, KEY).payload[0][1]
    assert np.array_equal(out, arr)


def test_small_arrays_stay_in_band() -> None:
    frames = encode(Kind.TASKS, "c", 1, KEY, None, np.ones(10), has_payload=True)
    assert len(frames) == 3


@pytest.mark.parametrize(
    "mutate",
    [
        lambda f: [b"\0" * 32, *f[1:]],  # wrong signature
        lambda f: f[1:],  # signature missing
        lambda f: [f[0][:-1], *f[1:]],  # truncated signature
        lambda f: [*f[:-1], f[-1][:-1]],  # truncated payload
        lambda f: [*f, b"extra"],  # extra frame
        lambda f: [f[0]],  # only one frame
    ],
)
def test_tampered_messages_raise_decode_error(mutate) -> None:
    frames = [bytes(x) for x in encode(Kind.RESULTS, "w", 1, KEY, None, [1], has_payload=True)]
    with pytest.raises(DecodeError):
        decode(mutate(frames), KEY)


def test_wrong_key_is_refused_before_unpickling(tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    frames = encode(Kind.RESULTS, "w", 1, b"other-key-000000", None, None, has_payload=True)
    frames[2] = pickle.dumps(Evil())
    with pytest.raises(DecodeError) as info:
        decode(frames, KEY)
    assert info.value.reason == "signature"
    assert not marker.exists()


def test_version_mismatch_names_both_versions() -> None:
    frames = encode(Kind.HELLO, "w", 1, KEY, {})
    env = msgpack.unpackb(frames[1])
    env[0] = PROTOCOL_VERSION + 1
    frames[1] = msgpack.packb(env)
    with pytest.raises(ProtocolVersionError) as info:
        decode(frames, KEY)
    assert f"protocol {PROTOCOL_VERSION + 1}" in str(info.value)
    assert f"speaks {PROTOCOL_VERSION}" in str(info.value)


def test_oversized_message_is_refused() -> None:
    frames = encode(Kind.RESULTS, "w", 1, KEY, None, b"x" * 5000, has_payload=True)
    with pytest.raises(DecodeError) as info:
        decode(frames, KEY, max_size=1000)
    assert info.value.reason == "size"


def test_replay_guard_refuses_old_sequence_numbers() -> None:
    guard = ReplayGuard()
    guard.check("a", 1)
    guard.check("a", 2)
    guard.check("b", 1)
    with pytest.raises(DecodeError) as info:
        guard.check("a", 2)
    assert info.value.reason == "replay"
