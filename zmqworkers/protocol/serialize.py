"""Payload serialization: pickle protocol 5 with out-of-band buffers.

A payload becomes one pickle frame plus one frame per large buffer (numpy
arrays, bytes-like objects): the buffers are handed to ZeroMQ as they are,
never copied into the pickle. Small buffers stay in-band, where one frame
costs more than the copy.

cloudpickle writes, so lambdas, closures and classes defined in ``__main__``
travel by value; the standard unpickler reads, so the receiving side needs
nothing but the importable modules the objects name.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

# Buffers below this size are pickled in-band: a frame of its own costs more
# than copying a few KiB.
OUT_OF_BAND_THRESHOLD = 64 * 1024


def dumps(obj: Any, *, by_value: bool = False, threshold: int = OUT_OF_BAND_THRESHOLD) -> list[Any]:
    """Serialize ``obj`` to ``[pickle_bytes, buffer, ...]``.

    ``by_value`` sends functions and classes of ``__main__`` by value
    (cloudpickle); otherwise the faster standard pickler is tried first.
    """
    buffers: list[Any] = []

    def keep_large(buf: pickle.PickleBuffer) -> bool:
        view = buf.raw()
        if view.nbytes < threshold:
            return True  # in-band
        buffers.append(view)
        return False

    if not by_value:
        try:
            return [pickle.dumps(obj, protocol=5, buffer_callback=keep_large), *buffers]
        except Exception:
            # Lambdas and closures: the standard pickler cannot take them
            # by reference, so they go by value below.
            buffers.clear()
    import cloudpickle  # loaded on first use: workers rarely need it to write

    head = cloudpickle.dumps(obj, protocol=5, buffer_callback=keep_large)
    return [head, *buffers]


def loads(frames: Sequence[Any]) -> Any:
    """Inverse of :func:`dumps`. Arrays come back as views of the frames."""
    return pickle.loads(frames[0], buffers=frames[1:])
