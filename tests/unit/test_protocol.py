from __future__ import annotations

import pickle

import msgpack
import numpy as np
import pytest

from zmqworkers.errors import DecodeError, ProtocolVersionError
from zmqworkers.protocol import Kind, ReplayGuard, SessionKey, decode, encode
from zmqworkers.protocol.messages import LARGE_FRAME, PROTOCOL_VERSION

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


def test_derived_keys_differ_by_label_and_by_each_part() -> None:
    from zmqworkers.protocol import derive_key

    base = derive_key(KEY, b"session", b"ab", b"c")
    assert len(base) == 32
    assert base == derive_key(KEY, b"session", b"ab", b"c")
    assert base != derive_key(KEY, b"session", b"a", b"bc")  # parts are length-prefixed
    assert base != derive_key(KEY, b"pub", b"ab", b"c")
    assert base != derive_key(b"other-key-000000", b"session", b"ab", b"c")


def test_key_lookup_by_sender() -> None:
    frames = encode(Kind.HEARTBEAT, "w1@s/hb", 1, b"session-key-0000", {"state": "idle"})

    def lookup(sender: str) -> bytes:
        if sender == "w1@s/hb":
            return b"session-key-0000"
        raise DecodeError("signature", "no session")

    assert decode(frames, lookup).header == {"state": "idle"}
    other = encode(Kind.HEARTBEAT, "w2@s/hb", 1, b"session-key-0000", None)
    with pytest.raises(DecodeError) as info:
        decode(other, lookup)
    assert info.value.reason == "signature"


@pytest.mark.parametrize(
    ("index", "value", "reason"),
    [
        (0, True, "malformed"),  # version as a bool
        (0, "1", "malformed"),
        (1, True, "malformed"),  # kind as a bool
        (1, 99, "kind"),  # unknown kind, validly signed
        (2, 5, "malformed"),  # sender not a string
        (2, "", "malformed"),
        (2, "s" * 300, "malformed"),
        (3, False, "malformed"),  # seq as a bool
        (3, 1.5, "malformed"),
        (5, 10**9, "malformed"),  # absurd payload frame count
        (5, -1, "malformed"),
    ],
)
def test_wrong_envelope_types_are_decode_errors(index, value, reason) -> None:
    from zmqworkers.protocol.messages import encode_frames

    frames = encode(Kind.HEARTBEAT, "w", 1, KEY, None)
    env = msgpack.unpackb(frames[1])
    env[index] = value
    if reason == "kind":
        # Validly signed, so the check past the signature is reached.
        frames = encode_frames(env[1], env[2], env[3], KEY, env[4], [])
    else:
        # Type checks come before the signature's: no need to re-sign.
        frames = [frames[0], msgpack.packb(env)]
    with pytest.raises(DecodeError) as info:
        decode(frames, KEY)
    assert info.value.reason == reason


def test_non_sequences_and_non_buffers_are_decode_errors() -> None:
    for frames in (5, None, [b"x" * 32, "text"], [b"x" * 32, None], [object(), b""]):
        with pytest.raises(DecodeError):
            decode(frames, KEY)  # type: ignore[arg-type]


def test_replay_guard_is_bounded_and_forgets_the_oldest_sender() -> None:
    guard = ReplayGuard(max_senders=3)
    for sender in "abcd":
        guard.check(sender, 5)
    assert len(guard._last) == 3
    guard.check("a", 1)  # "a" was forgotten: memory stays bounded
    with pytest.raises(DecodeError):
        guard.check("d", 5)


def test_key_files_are_private_and_never_overwritten(tmp_path) -> None:
    from zmqworkers.security.keys import INSECURE_KEY, MIN_KEY_LENGTH, read_key_file, write_key_file

    path = write_key_file(tmp_path / "k")
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(read_key_file(path)) == 64
    with pytest.raises(FileExistsError):
        write_key_file(path)
    assert len(INSECURE_KEY) >= MIN_KEY_LENGTH


def _flip(frames: list, index: int) -> list:
    out = [bytes(f) for f in frames]
    changed = bytearray(out[index])
    changed[len(changed) // 2] ^= 0xFF
    out[index] = bytes(changed)
    return out


def test_buffers_on_a_protected_link_are_signed_by_length_only() -> None:
    arr = np.arange(1 << 15, dtype=np.float64)  # 256 KiB: out of band
    light = SessionKey(KEY, sign_buffers=False)
    full = SessionKey(KEY)
    frames = encode(Kind.TASKS, "ctl", 1, light, None, [(1, arr)], has_payload=True)
    assert len(frames) == 4  # [signature, envelope, pickle, buffer]
    # Agreed in the handshake for links nothing can change in transit: a
    # changed buffer passes here, and only here.
    assert decode(_flip(frames, 3), light).payload[0][1][len(arr) // 2] != arr[len(arr) // 2]
    full_frames = encode(Kind.TASKS, "ctl", 1, full, None, [(1, arr)], has_payload=True)
    with pytest.raises(DecodeError) as info:
        decode(_flip(full_frames, 3), full)
    assert info.value.reason == "signature"
    # Its length is still signed, and so is everything else.
    shorter = [*frames[:3], bytes(frames[3])[:-8]]
    cases = [
        (shorter, light),
        (_flip(frames, 2), light),  # the pickle stream
        # The two modes never verify each other's messages.
        (frames, full),
        (full_frames, light),
    ]
    for case, key in cases:
        with pytest.raises(DecodeError) as info:
            decode(case, key)
        assert info.value.reason == "signature"


def test_a_large_pickle_stream_is_signed_in_full_even_on_a_protected_link() -> None:
    light = SessionKey(KEY, sign_buffers=False)
    payload = [str(i) for i in range(LARGE_FRAME // 4)]  # in-band, over LARGE_FRAME
    frames = encode(Kind.TASKS, "ctl", 1, light, None, payload, has_payload=True)
    assert len(frames) == 3 and len(frames[2]) >= LARGE_FRAME
    assert decode(frames, light).payload == payload
    with pytest.raises(DecodeError) as info:
        decode(_flip(frames, 2), light)
    assert info.value.reason == "signature"


def test_a_signed_message_refused_past_its_signature_says_its_kind_and_number() -> None:
    # Segments named in a session that did not agree on them: refused after
    # the signature check, so the number is the sender's, and a worker can
    # count the message as received (its tasks are then sent again).
    from zmqworkers.protocol import segments
    from zmqworkers.protocol.messages import encode_frames

    header = {segments.HEADER_KEY: [[1, "zmqw-1.2-abc-def-0", 10]]}
    frames = encode_frames(Kind.TASKS, "ctl", 9, KEY, header, [b"", b""])
    with pytest.raises(DecodeError) as info:
        decode(frames, KEY)
    assert info.value.reason == "unexpected"
    assert (info.value.kind, info.value.seq) == (Kind.TASKS, 9)
    # Before the signature nothing of the envelope is trusted.
    forged = [bytes(32), *frames[1:]]
    with pytest.raises(DecodeError) as info:
        decode(forged, KEY)
    assert info.value.reason == "signature" and info.value.seq is None
