"""Payload serialization: pickle protocol 5 with out-of-band buffers.

A payload becomes one pickle frame plus one frame per large buffer (numpy
arrays, bytes-like objects): the buffers are handed to ZeroMQ as they are,
never copied into the pickle. Small buffers stay in-band, where one frame
costs more than the copy.

cloudpickle writes, so lambdas, closures and classes defined in ``__main__``
travel by value; the standard unpickler reads, so the receiving side needs
nothing but the importable modules the objects name.

Packed (``pack=True``, for a session whose buffers go through shared
memory): mid-size buffers, which would otherwise be copied into the pickle
stream or sent as small frames of their own, are copied instead into one
frame, right after the stream, and ``layout`` says which buffer is where.
The receiver copies each back out into a bytearray, or bytes where it
would have arrived read-only (read-only, or a frame of its own), so they
arrive as they would have; but the stream stays small (no growing output
buffer, nothing large to sign in full), and the packed frame, large, goes
through a segment.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

# Buffers below this size are pickled in-band: a frame of its own costs more
# than copying a few KiB.
OUT_OF_BAND_THRESHOLD = 64 * 1024
# Packed, buffers from this size up leave the stream for the packed frame.
PACK_THRESHOLD = 8 * 1024
# ... and up to this size (a segment's threshold: from there a buffer goes to
# shared memory on its own, uncopied).
PACK_LIMIT = 128 * 1024
# At most this many bytes of layout in the header (1 to 5 bytes an entry):
# a payload of more buffers is not packed. With what protocol/segments.py
# lets the names said freed and the segment entries take, the header stays
# within the envelope's limit (64 KiB), which the receiver enforces by
# refusing the whole message.
LAYOUT_BUDGET = 24 * 1024


class Packed(list):  # type: ignore[type-arg]
    """Frames of a packed payload: ``layout`` has one entry per out-of-band
    buffer, in the stream's order: -1 for a frame of its own (after the
    packed one), else ``2 * size + readonly`` for the next span of it."""

    layout: list[int]


def dumps(
    obj: Any,
    *,
    by_value: bool = False,
    threshold: int = OUT_OF_BAND_THRESHOLD,
    pack: bool = False,
) -> list[Any]:
    """Serialize ``obj`` to ``[pickle_bytes, buffer, ...]``.

    ``by_value`` sends functions and classes of ``__main__`` by value
    (cloudpickle); otherwise the faster standard pickler is tried first.
    With ``pack``, mid-size buffers go to one packed frame: the result is
    then :class:`Packed` (when there were any).
    """
    buffers: list[Any] = []
    packed: list[Any] = []
    layout: list[int] = []
    smallest = PACK_THRESHOLD if pack else threshold
    largest = PACK_LIMIT if pack else threshold

    def keep_large(buf: pickle.PickleBuffer) -> bool:
        view = buf.raw()
        n = view.nbytes
        if n < smallest:
            return True  # in-band
        if n < largest:
            packed.append(view)
            # Read-only where it would have arrived so: in the stream as
            # bytes, or (from the threshold up) as a view of its frame.
            layout.append(2 * n + (view.readonly or n >= threshold))
        else:
            buffers.append(view)
            layout.append(-1)
        return False

    head = None
    if not by_value:
        try:
            head = pickle.dumps(obj, protocol=5, buffer_callback=keep_large)
        except Exception:
            # Lambdas and closures: the standard pickler cannot take them
            # by reference, so they go by value below.
            buffers.clear()
            packed.clear()
            layout.clear()
    if head is None:
        import cloudpickle  # loaded on first use: workers rarely need it to write

        head = cloudpickle.dumps(obj, protocol=5, buffer_callback=keep_large)
    if not packed:
        return [head, *buffers]
    if len(layout) * 5 > LAYOUT_BUDGET and _packed_size(layout) > LAYOUT_BUDGET:
        return dumps(obj, by_value=by_value, threshold=threshold)
    out = Packed([head, b"".join(packed), *buffers])
    out.layout = layout
    return out


def _packed_size(layout: list[int]) -> int:
    """The bytes ``layout`` takes in a msgpack header."""
    import msgpack

    return len(msgpack.packb(layout))


def loads(frames: Sequence[Any], layout: Sequence[int] | None = None) -> Any:
    """Inverse of :func:`dumps`. Arrays come back as views of the frames.

    ``layout``: a packed payload's (:class:`Packed`); its spans come back as
    copies, writable unless they were read-only.
    """
    if layout is None:
        return pickle.loads(frames[0], buffers=frames[1:])
    return pickle.loads(frames[0], buffers=unpack(frames[1:], layout))


def unpack(frames: Sequence[Any], layout: Sequence[int]) -> list[Any]:
    """The out-of-band buffers of a packed payload, in the stream's order."""
    if not frames:
        raise ValueError("a packed payload without its packed frame")
    whole = memoryview(frames[0]).cast("B")
    own = iter(frames[1:])
    out: list[Any] = []
    pos = 0
    for entry in layout:
        if not isinstance(entry, int) or isinstance(entry, bool):
            raise ValueError(f"layout entry {entry!r} is not a number")
        if entry < 0:
            out.append(next(own))
            continue
        end = pos + entry // 2
        if end > whole.nbytes:
            raise ValueError("the layout runs past the packed frame")
        span = whole[pos:end]
        out.append(bytes(span) if entry & 1 else bytearray(span))
        pos = end
    if pos != whole.nbytes or next(own, None) is not None:
        raise ValueError("the layout does not cover the packed frame")
    return out
