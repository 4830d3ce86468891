"""The C heap's thresholds for large message buffers.

ZeroMQ receives every frame above a few kilobytes into a block of its own
from ``malloc``. glibc serves a large block from its heap only once the
process has freed one as large (its "dynamic mmap threshold"), and then gives
memory at the top of a heap back to the kernel as soon as twice that much is
free there. With 8 MiB arrays that is two frames: a controller or worker that
has taken two results and let them go hands the pages back, and ZeroMQ's next
receive faults them in again, each page zeroed by the kernel. Over loopback
TCP that was about a fifth of the CPU of the controller's I/O thread, the
thread that moves every frame, per 8 MiB round trip.

:func:`keep_large_buffers` sets both thresholds once per process to where
glibc's own rule puts them after a block of 32 MiB (its upper bound): blocks
up to 32 MiB come from the heap, and a heap keeps up to 64 MiB free at its
top. A process that frees a 32 MiB numpy array lands there anyway; this only
does it before the first frame rather than by chance. Other C libraries, and
a process whose environment already tunes glibc's malloc, are left as they are,
as is a process started with ``ZMQWORKERS_TUNE_MALLOC=0`` (its local
workers inherit that).
"""

from __future__ import annotations

import ctypes
import os
import threading

# glibc's mallopt parameters (malloc.h) and the largest mmap threshold its
# dynamic rule reaches on 64-bit systems (4 MiB * sizeof(long)).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD

# Set by the user for glibc's malloc: then the user's values stand.
_USER_SETTINGS = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
)

# "0": leave glibc's dynamic thresholds alone.
OPT_OUT = "ZMQWORKERS_TUNE_MALLOC"

_lock = threading.Lock()
_done: bool | None = None


def keep_large_buffers() -> bool:
    """Set glibc's thresholds for large blocks (once); whether they are set."""
    global _done
    with _lock:
        if _done is None:
            _done = _set_thresholds()
        return _done


def _set_thresholds() -> bool:
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
    except (AttributeError, ValueError, OSError):
        return False  # not glibc
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    if os.environ.get(OPT_OUT) == "0":
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # The mmap threshold first: setting either one ends the dynamic rule.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
