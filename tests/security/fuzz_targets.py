"""Frame lists for fuzzing the decoder: valid seeds and ways to break them.

Shared by the hypothesis test, the seeded random test, and the atheris
target (``python -m tests.security.fuzz_targets -runs=N``).
"""

from __future__ import annotations

import random
import sys
from typing import Any

import msgpack
import numpy as np

from zmqworkers.errors import DecodeError
from zmqworkers.protocol import Kind, Message, encode
from zmqworkers.protocol.messages import encode_frames

KEY = b"fuzz-key-0123456789abcdef"
MAX_SIZE = 1 << 20


def seeds() -> list[list[bytes]]:
    out = [
        encode(Kind.HELLO, "w1", 1, KEY, {"id": "w1", "nonce": b"n" * 16, "pid": 3}),
        encode(Kind.TASKS, "ctl", 2, KEY, {"spec": "ab"}, [(1, "x"), (2, 3.5)], has_payload=True),
        encode(Kind.RESULTS, "w1@aa/r", 3, KEY, None, [(1, True, None)], has_payload=True),
        encode(Kind.RESULTS, "w", 4, KEY, None, np.arange(20000.0), has_payload=True),
        encode(Kind.HEARTBEAT, "w1@aa/hb", 5, KEY, {"state": "busy", "task": 9}),
        encode(Kind.BYE, "w1@aa/r", 6, KEY, {"returned": [1, 2, 3]}),
        encode(Kind.STOP, "ctl/pub", 7, KEY, {"worker": None}),
    ]
    return [[bytes(memoryview(f)) for f in frames] for frames in out]


SEEDS = seeds()


def resign(frames: list[Any]) -> list[Any]:
    """Give mutated frames a valid signature, so checks past it are reached."""
    try:
        env = msgpack.unpackb(frames[1], raw=False)
        version, kind, sender, seq, header, _ = env
        return encode_frames(kind, sender, seq, KEY, header, frames[2:])
    except Exception:
        return frames


def mutate(rng: random.Random, frames: list[bytes]) -> list[Any]:
    """One to four random edits: bytes, lengths, frame counts, envelope fields."""
    out: list[Any] = list(frames)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        i = rng.randrange(len(out)) if out else 0
        is_bytes = bool(out) and isinstance(out[i], bytes)
        if op == 0 and is_bytes and len(out[i]):
            b = bytearray(out[i])
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            out[i] = bytes(b)
        elif op == 1 and is_bytes:
            out[i] = out[i][: rng.randrange(len(out[i]) + 1)]
        elif op == 2 and out:
            del out[i]
        elif op == 3:
            out.insert(i, rng.randbytes(rng.randrange(64)))
        elif op == 4 and out:
            out.append(out[i])
        elif op == 5 and len(out) > 1:
            env = [rng.choice(_WEIRD) for _ in range(rng.choice((0, 5, 6, 6, 6, 7)))]
            out[1] = msgpack.packb(env, use_bin_type=True)
        elif op == 6 and len(out) > 1:
            try:
                env = msgpack.unpackb(out[1], raw=False)
                env[rng.randrange(len(env))] = rng.choice(_WEIRD)
                out[1] = msgpack.packb(env, use_bin_type=True)
            except Exception:
                pass
        elif op == 7:
            out.insert(i, rng.choice((None, 5, "text", 1.5, [b"x"])))
        elif op == 8 and out:
            out[i] = b"\xff" * rng.choice((1, 32, 65 * 1024, MAX_SIZE + 1))
    return resign(out) if rng.random() < 0.5 else out


_WEIRD: list[Any] = [
    None, True, False, 0, 1, 2, -1, 99, 2**63, -(2**63), 1.5, "", "x" * 300, "ctl",
    b"", b"\x00" * 40, [], [1, 2], {}, {"spec": 3}, {"a": {"b": [None]}}, [[[[]]]],
]  # fmt: skip


def check(frames: Any) -> Message | None:
    """Decode; anything but a message or a DecodeError fails the fuzzing."""
    from zmqworkers.protocol import messages

    try:
        # Payloads of re-signed mutants are random bytes: never unpickled here.
        return messages.decode(frames, KEY, max_size=MAX_SIZE, unpickle=False)
    except DecodeError:
        return None


def check_with_lookup(frames: Any) -> Message | None:
    def lookup(sender: str) -> bytes:
        if sender.startswith("w1"):
            return KEY
        raise DecodeError("signature", "unknown sender")

    from zmqworkers.protocol import messages

    try:
        return messages.decode(frames, lookup, max_size=MAX_SIZE, unpickle=False)
    except DecodeError:
        return None


def atheris_main() -> None:  # pragma: no cover - run as a subprocess
    import atheris

    def one_input(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        if fdp.ConsumeBool():
            rng = random.Random(fdp.ConsumeInt(8))
            frames: list[Any] = mutate(rng, SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)])
        else:
            frames = [
                fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))
                for _ in range(fdp.ConsumeIntInRange(0, 5))
            ]
            if frames and fdp.ConsumeBool():
                frames = resign(frames)
        check(frames)
        check_with_lookup(frames)

    # Coverage guidance over the decoder's own code.
    from zmqworkers.protocol import messages

    messages.decode = atheris.instrument_func(messages.decode)  # type: ignore[assignment]
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    atheris_main()
