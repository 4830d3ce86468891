"""Shared-memory segments in the protocol: who may name them, and their lifetimes."""

from __future__ import annotations

import gc
import os
import pickle
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pytest

from zmqworkers.errors import DecodeError, MessageTooLarge
from zmqworkers.protocol import Kind, SessionKey, decode, encode
from zmqworkers.protocol.messages import encode_frames, frames_size
from zmqworkers.protocol.segments import (
    FREED_KEY,
    HEADER_KEY,
    LENT_KEY,
    SEGMENT_THRESHOLD,
    SegmentLink,
    available,
    owner_prefix,
    release,
    sweep,
)
from zmqworkers.protocol.serialize import Packed, dumps, loads
from zmqworkers.worker.calls import result_messages

pytestmark = pytest.mark.skipif(not available(), reason="no POSIX shared memory in /dev/shm")

SECRET = b"s" * 32
BIG = np.arange(SEGMENT_THRESHOLD // 8 * 2, dtype=np.float64)


@pytest.fixture
def prefix() -> Iterator[str]:
    p = f"{owner_prefix()}{secrets.token_hex(6)}-{secrets.token_hex(6)}-"
    yield p
    left = sweep(p)
    assert left == 0, f"{left} segment(s) left under {p}"


def pair(prefix: str) -> tuple[SessionKey, SessionKey]:
    """The two ends of one session with segments."""
    return (
        SessionKey(SECRET, sign_buffers=False, segments=SegmentLink(prefix)),
        SessionKey(SECRET, sign_buffers=False, segments=SegmentLink(prefix)),
    )


def close(*keys: SessionKey) -> None:
    """End each key's segments (the prefix fixture then finds none left)."""
    for key in keys:
        assert key.segments is not None
        key.segments.close()


def names(prefix: str) -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))


def test_a_large_buffer_travels_as_a_segment_and_is_reused_once_freed(prefix: str) -> None:
    sender, receiver = pair(prefix)
    frames = encode(Kind.TASKS, "ctl", 1, sender, {"spec": "s"}, [BIG], has_payload=True)
    # Counted as if it travelled, but the socket carries only a little.
    assert frames_size(frames) > BIG.nbytes
    assert sum(memoryview(f).nbytes for f in frames) < 64 * 1024
    msg = decode(frames, receiver)
    (got,) = msg.payload
    assert np.array_equal(got, BIG) and not got.flags.writeable
    first = names(prefix)
    assert len(first) == 1
    # Busy until the receiver's views go and it says so in a message.
    encode(Kind.TASKS, "ctl", 2, sender, {"spec": "s"}, [BIG + 1], has_payload=True)
    assert len(names(prefix)) == 2
    del msg, got
    gc.collect()
    back = encode(Kind.HEARTBEAT, "w", 1, receiver, {"id": "w"})
    decode(back, sender)
    encode(Kind.TASKS, "ctl", 3, sender, {"spec": "s"}, [BIG + 2], has_payload=True)
    assert len(names(prefix)) == 2, "a freed segment is written again, not a new one"
    close(sender)


def test_a_session_without_segments_refuses_a_message_that_names_one(prefix: str) -> None:
    sender, _ = pair(prefix)
    frames = encode(Kind.TASKS, "ctl", 1, sender, {"spec": "s"}, [BIG], has_payload=True)
    for key in (SessionKey(SECRET, sign_buffers=False), SessionKey(SECRET, sign_buffers=True)):
        with pytest.raises(DecodeError) as err:
            decode(frames, key)
        assert err.value.reason in ("unexpected", "signature")
    close(sender)


def test_a_name_outside_the_session_is_refused(prefix: str) -> None:
    sender, _ = pair(prefix)
    other = SessionKey(
        SECRET,
        sign_buffers=False,
        segments=SegmentLink(f"{owner_prefix()}{secrets.token_hex(6)}-abcdef-"),
    )
    frames = encode(Kind.TASKS, "ctl", 1, sender, {"spec": "s"}, [BIG], has_payload=True)
    with pytest.raises(DecodeError, match="outside the session"):
        decode(frames, other)
    close(sender)


def test_a_segment_others_could_write_is_refused(prefix: str) -> None:
    sender, receiver = pair(prefix)
    frames = encode(Kind.TASKS, "ctl", 1, sender, {"spec": "s"}, [BIG], has_payload=True)
    (name,) = names(prefix)
    os.chmod(f"/dev/shm/{name}", 0o644)
    with pytest.raises(DecodeError, match="private"):
        decode(frames, receiver)
    close(sender)


def test_a_session_that_signs_buffers_never_uses_segments(prefix: str) -> None:
    key = SessionKey(SECRET, sign_buffers=True, segments=SegmentLink(prefix))
    frames = encode(Kind.TASKS, "ctl", 1, key, {"spec": "s"}, [BIG], has_payload=True)
    assert sum(memoryview(f).nbytes for f in frames) > BIG.nbytes
    assert names(prefix) == []


def test_the_orphan_sweep_judges_only_names_of_its_own_pid_namespace() -> None:
    import subprocess
    import sys

    from zmqworkers.controller.segments import sweep_orphans

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs (here)
    here = f"{owner_prefix(gone.pid)}{secrets.token_hex(6)}-ab-cd"
    ns = owner_prefix(0).split(".")[0].removeprefix("zmqw-")
    other_ns = str(int(ns) + 1)
    elsewhere = f"zmqw-{other_ns}.{gone.pid}-{secrets.token_hex(6)}-ab-cd"
    for name in (here, elsewhere):
        with open(f"/dev/shm/{name}", "xb") as f:
            f.write(b"x")
    try:
        sweep_orphans()
        left = set(os.listdir("/dev/shm"))
        assert here not in left, "a dead controller's segment of this namespace stayed"
        assert elsewhere in left, "another pid namespace's segment was judged by our pids"
    finally:
        for name in (here, elsewhere):
            if os.path.exists(f"/dev/shm/{name}"):
                os.unlink(f"/dev/shm/{name}")


def test_a_result_that_is_its_input_goes_back_by_reference(prefix: str) -> None:
    ctl, worker = pair(prefix)
    task = decode(encode(Kind.TASKS, "ctl", 1, ctl, {}, [BIG], has_payload=True), worker)
    (arg,) = task.payload
    frames = encode(Kind.RESULTS, "w", 1, worker, {}, [arg], has_payload=True)
    # Neither copied into the message nor into a segment of the worker's.
    assert sum(memoryview(f).nbytes for f in frames) < 64 * 1024
    assert frames_size(frames) > BIG.nbytes
    assert len(names(prefix)) == 1
    (back,) = decode(frames, ctl).payload
    assert np.array_equal(back, BIG) and not back.flags.writeable
    with pytest.raises(ValueError):
        back.flags.writeable = True  # read-only for good, as a mapped result is
    del frames, task, arg
    gc.collect()
    # The worker's view went, but its name is said back only by the thread
    # that sent the reference: from a heartbeat's thread (its own socket)
    # it could overtake the result, and the segment be written under it.
    beats: list[Any] = []
    beat = threading.Thread(
        target=lambda: beats.append(encode(Kind.HEARTBEAT, "w", 2, worker, {"id": "w"}))
    )
    beat.start()
    beat.join(10)
    assert FREED_KEY not in decode(beats[0], ctl).header
    freed = decode(encode(Kind.HEARTBEAT, "w", 3, worker, {"id": "w"}), ctl)
    assert len(freed.header[FREED_KEY]) == 1
    # Let go by the worker, but still held here by the result.
    encode(Kind.TASKS, "ctl", 2, ctl, {}, [BIG + 1], has_payload=True)
    assert len(names(prefix)) == 2, "a segment a result still shows was written again"
    del back
    gc.collect()
    freed = decode(encode(Kind.HEARTBEAT, "w", 4, worker, {"id": "w"}), ctl)
    encode(Kind.TASKS, "ctl", 3, ctl, {}, [BIG + 2], has_payload=True)
    assert len(names(prefix)) == 2, "a segment free on both sides is written again"
    close(ctl, worker)


def test_a_new_result_goes_into_a_segment_of_the_worker(prefix: str) -> None:
    ctl, worker = pair(prefix)
    task = decode(encode(Kind.TASKS, "ctl", 1, ctl, {}, [BIG], has_payload=True), worker)
    (arg,) = task.payload
    frames = encode(Kind.RESULTS, "w", 1, worker, {}, [arg + 1], has_payload=True)
    assert len(names(prefix)) == 2
    (back,) = decode(frames, ctl).payload
    assert np.array_equal(back, BIG + 1)
    close(ctl, worker)


def test_a_reference_to_a_segment_not_lent_is_refused(prefix: str) -> None:
    ctl, worker = pair(prefix)
    task = decode(encode(Kind.TASKS, "ctl", 1, ctl, {}, [BIG], has_payload=True), worker)
    frames = encode(Kind.RESULTS, "w", 1, worker, {}, task.payload, has_payload=True)
    assert ctl.segments is not None
    ctl.segments.give_back(names(prefix))  # as if the worker had let go before
    with pytest.raises(DecodeError, match="not a segment lent"):
        decode(frames, ctl)
    close(ctl, worker)


@pytest.mark.parametrize("field", [0, 2, 3])
def test_a_lent_entry_with_true_for_a_number_is_refused(prefix: str, field: int) -> None:
    # msgpack keeps booleans apart from integers; Python's isinstance does not.
    ctl, worker = pair(prefix)
    encode(Kind.TASKS, "ctl", 1, ctl, {}, [BIG], has_payload=True)  # lent to the worker
    (name,) = names(prefix)
    assert ctl.segments is not None
    entry: list[Any] = [1, name, 0, 1]
    assert ctl.segments.receive({LENT_KEY: [entry]}, [b"p", b""])[1].nbytes == 1
    entry[field] = True
    with pytest.raises(DecodeError, match="lent entry"):
        ctl.segments.receive({LENT_KEY: [entry]}, [b"p", b""])
    close(ctl, worker)


@pytest.mark.parametrize("field", [0, 2])
def test_a_segment_entry_with_true_for_a_number_is_refused(prefix: str, field: int) -> None:
    ctl, worker = pair(prefix)
    encode(Kind.TASKS, "ctl", 1, ctl, {}, [BIG], has_payload=True)
    (name,) = names(prefix)
    assert worker.segments is not None
    entry: list[Any] = [1, name, 1]
    assert memoryview(worker.segments.receive({HEADER_KEY: [entry]}, [b"p", b""])[1]).nbytes == 1
    entry[field] = True
    with pytest.raises(DecodeError, match="segment entry"):
        worker.segments.receive({HEADER_KEY: [entry]}, [b"p", b""])
    close(ctl, worker)


def test_mid_size_arrays_are_packed_into_one_frame_and_arrive_as_in_band_ones(
    prefix: str,
) -> None:
    ctl, worker = pair(prefix)
    frozen = np.arange(2048.0) + 7
    frozen.flags.writeable = False
    payload = [
        (i, np.full(2048, float(i)))
        for i in range(40)  # 16 KiB each: packed
    ] + [(40, frozen), (41, np.arange(10.0)), (42, BIG), (43, "text"), (44, np.ones(12_000))]
    frames = encode(Kind.TASKS, "ctl", 1, ctl, {"spec": "s"}, payload, has_payload=True)
    # One packed frame for the 42 mid-size arrays: past the segment
    # threshold together, so it went to shared memory with BIG.
    assert len(frames) == 5 and len(names(prefix)) == 2
    msg = decode(frames, worker)
    got = msg.payload
    assert [t for t, _ in got] == list(range(45))
    # 96 KiB: out of band, read-only, as it was as a frame of its own.
    assert np.array_equal(got[44][1], np.ones(12_000)) and not got[44][1].flags.writeable
    for i in range(40):
        assert np.array_equal(got[i][1], np.full(2048, float(i)))
        assert got[i][1].flags.writeable, "in-band arrays arrive writable, packed ones too"
    assert np.array_equal(got[40][1], frozen) and not got[40][1].flags.writeable
    assert np.array_equal(got[41][1], np.arange(10.0))
    assert np.array_equal(got[42][1], BIG) and not got[42][1].flags.writeable
    assert got[43][1] == "text"
    close(ctl, worker)


def test_a_packed_payload_is_refused_where_the_session_does_not_pack(prefix: str) -> None:
    ctl, _ = pair(prefix)
    payload = [np.ones(2048) for _ in range(4)]
    frames = encode(Kind.TASKS, "ctl", 1, ctl, {"spec": "s"}, payload, has_payload=True)
    plain = SessionKey(SECRET, sign_buffers=False)
    with pytest.raises(DecodeError) as err:
        decode(frames, plain)
    assert err.value.reason == "unexpected"
    # Without segments nothing is packed: mid-size arrays stay in the stream.
    frames = encode(Kind.TASKS, "ctl", 2, plain, {"spec": "s"}, payload, has_payload=True)
    assert len(frames) == 3
    assert all(a.flags.writeable for a in decode(frames, plain).payload)
    close(ctl)


def test_a_layout_that_does_not_fit_its_packed_frame_is_refused() -> None:
    frames = dumps([np.ones(2048), np.ones(2048)], pack=True)
    assert isinstance(frames, Packed) and len(frames) == 2
    assert loads(frames, frames.layout)[1].sum() == 2048
    for layout in ([frames.layout[0]], [*frames.layout, frames.layout[0]], [3, 3], ["x"]):
        with pytest.raises((ValueError, pickle.UnpicklingError)):
            loads(frames, layout)


def test_a_payload_of_more_buffers_than_a_layout_holds_is_not_packed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from zmqworkers.protocol import serialize

    # Four entries of 3 bytes and the list's own byte.
    monkeypatch.setattr(serialize, "LAYOUT_BUDGET", 13)
    few = dumps([np.ones(2048) for _ in range(4)], pack=True)
    many = dumps([np.ones(2048) for _ in range(5)], pack=True)
    assert isinstance(few, Packed) and not isinstance(many, Packed)
    assert len(many) == 1 and all(a.flags.writeable for a in loads(many))


def _freed_by_worker(ctl: SessionKey, worker: SessionKey, n: int) -> None:
    """``n`` segments of ``ctl``'s, each sent, read and let go by ``worker``."""
    tasks = [
        decode(encode(Kind.TASKS, "ctl", i, ctl, {}, [BIG + i], has_payload=True), worker)
        for i in range(1, n + 1)
    ]
    del tasks
    gc.collect()


def test_names_said_freed_stay_within_a_budget_and_the_rest_follow(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zmqworkers.protocol import segments

    monkeypatch.setattr(segments, "FREED_BUDGET", 400)
    ctl, worker = pair(prefix)
    _freed_by_worker(ctl, worker, 6)
    said: list[list[str]] = []
    for seq in range(1, 10):
        header = decode(encode(Kind.HEARTBEAT, "w", seq, worker, {"id": "w"}), ctl).header
        if FREED_KEY not in header:
            break
        said.append(header[FREED_KEY])
    assert len(said) > 1, "six names fit in 400 bytes"
    assert all(len(msgpack.packb(n)) <= 400 for n in said)
    assert sorted(n for part in said for n in part) == names(prefix)
    # All six free again: written again, none made anew.
    for i in range(6):
        encode(Kind.TASKS, "ctl", 10 + i, ctl, {}, [BIG], has_payload=True)
    assert len(names(prefix)) == 6
    close(ctl, worker)


def test_the_budgets_of_a_header_leave_room_within_the_envelope() -> None:
    from zmqworkers.protocol import segments, serialize
    from zmqworkers.protocol.messages import MAX_ENVELOPE_SIZE

    taken = segments.FREED_BUDGET + segments.ENTRIES_BUDGET + serialize.LAYOUT_BUDGET
    assert taken + 8 * 1024 <= MAX_ENVELOPE_SIZE


def test_many_large_buffers_beyond_the_entries_budget_go_through_the_socket(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zmqworkers.protocol import segments

    monkeypatch.setattr(segments, "ENTRIES_BUDGET", 600)
    ctl, worker = pair(prefix)
    arrays = [BIG + i for i in range(8)]
    frames = encode(Kind.TASKS, "ctl", 1, ctl, {}, arrays, has_payload=True)
    assert 0 < len(names(prefix)) < 8
    got = decode(frames, worker).payload
    assert len(got) == 8 and all(np.array_equal(a, b) for a, b in zip(got, arrays))
    del got
    close(ctl, worker)


def test_a_header_over_the_envelope_is_refused_and_what_it_carried_kept(prefix: str) -> None:
    ctl, worker = pair(prefix)
    _freed_by_worker(ctl, worker, 1)
    ctl_names = names(prefix)
    with pytest.raises(MessageTooLarge, match="header takes") as caught:
        encode(Kind.RESULTS, "w", 1, worker, {"text": "x" * 70_000}, [BIG], has_payload=True)
    assert caught.value.size > caught.value.limit == 64 * 1024
    # The name it would have said goes in the next message; the segment it
    # would have written is free again (two on the host: one each).
    header = decode(encode(Kind.HEARTBEAT, "w", 2, worker, {"id": "w"}), ctl).header
    assert header[FREED_KEY] == ctl_names
    frames = encode(Kind.RESULTS, "w", 3, worker, {}, [BIG], has_payload=True)
    assert len(names(prefix)) == 2
    del frames
    close(ctl, worker)


def test_a_message_not_sent_puts_back_the_names_it_said_freed(prefix: str) -> None:
    ctl, worker = pair(prefix)
    _freed_by_worker(ctl, worker, 1)
    ctl_names = names(prefix)
    seq = iter(range(1, 100))
    batch = [(1, True, np.ones(40_000)), (2, True, np.ones(40_000))]
    # Together over the limit: built once whole, not sent, then split.
    sent = list(result_messages(batch, 0.0, 500_000, lambda: ("w", next(seq), worker)))
    assert len(sent) == 2
    said = [decode(m, ctl).header.get(FREED_KEY) for m in sent]
    assert said[0] == ctl_names, "the name said freed went with the unsent message"
    before = names(prefix)
    encode(Kind.TASKS, "ctl", 5, ctl, {}, [BIG], has_payload=True)
    assert names(prefix) == before, "the segment said freed is written again"
    close(ctl, worker)


def test_a_name_sent_back_by_reference_and_not_sent_is_said_later(prefix: str) -> None:
    ctl, worker = pair(prefix)
    task = decode(encode(Kind.TASKS, "ctl", 1, ctl, {}, [BIG], has_payload=True), worker)
    back = decode(encode(Kind.RESULTS, "w", 1, worker, {}, task.payload, has_payload=True), ctl)
    del task, back
    gc.collect()
    frames = encode(Kind.HEARTBEAT, "w", 2, worker, {"id": "w"})
    release(frames)  # not sent after all
    header = decode(encode(Kind.HEARTBEAT, "w", 3, worker, {"id": "w"}), ctl).header
    assert header[FREED_KEY] == names(prefix)
    encode(Kind.TASKS, "ctl", 2, ctl, {}, [BIG], has_payload=True)
    assert len(names(prefix)) == 1, "the segment said freed is written again"
    close(ctl, worker)


def test_a_refused_lent_entry_does_not_discard_the_names_said_freed(prefix: str) -> None:
    ctl, worker = pair(prefix)
    _freed_by_worker(ctl, worker, 1)
    header = decode(encode(Kind.HEARTBEAT, "w", 1, worker, {"id": "w"}), worker).header
    # The same names with a malformed lent entry, signed by the session's
    # key (a sender of another release, or a bug): refused, names taken.
    bad = {**header, LENT_KEY: "junk"}
    plain = SessionKey(SECRET, sign_buffers=False)
    with pytest.raises(DecodeError, match="shm_lent"):
        decode(encode_frames(Kind.HEARTBEAT, "w", 2, plain, bad, []), ctl)
    encode(Kind.TASKS, "ctl", 3, ctl, {}, [BIG], has_payload=True)
    assert len(names(prefix)) == 1, "the segment said freed is written again"
    close(ctl, worker)


def test_a_message_that_cannot_be_built_puts_back_the_names_it_said_freed(prefix: str) -> None:
    ctl, worker = pair(prefix)
    _freed_by_worker(ctl, worker, 1)
    ctl_names = names(prefix)
    # A body frame that is no buffer: building fails after the names were taken.
    with pytest.raises(TypeError):
        encode_frames(Kind.RESULTS, "w", 1, worker, {}, [b"", 42])
    said = decode(encode(Kind.HEARTBEAT, "w", 2, worker, {"id": "w"}), ctl).header
    assert said.get(FREED_KEY) == ctl_names, "the name went with the message that failed"
    close(ctl, worker)
