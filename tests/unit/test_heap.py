"""Large blocks freed and taken again keep their pages (zmqworkers.heap)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# In a fresh process: blocks as large as 8 MiB frames, three taken, written
# and let go, round after round (a controller taking results); prints the
# page faults of the rounds after the first.
CHURN = r"""
import ctypes, resource, sys
if sys.argv[1] == "keep":
    from zmqworkers.heap import keep_large_buffers
    assert keep_large_buffers() and keep_large_buffers()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 8 << 20
def round_():
    blocks = [libc.malloc(size) for _ in range(3)]
    for b in blocks:
        ctypes.memset(b, 1, size)
    for b in blocks:
        libc.free(b)
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    round_()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc = pytest.mark.skipif(
    not hasattr(os, "confstr") or not os.confstr("CS_GNU_LIBC_VERSION"),
    reason="the thresholds are glibc's",
)


def faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", CHURN, mode], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


@glibc
def test_freed_large_blocks_keep_their_pages() -> None:
    pages = 5 * 3 * (8 << 20) // os.sysconf("SC_PAGE_SIZE")
    kept = faults("keep")
    # Without the thresholds glibc hands the pages back and faults them in
    # again on every round; with them, a handful of faults at most.
    assert kept < pages // 20, (kept, pages, faults("default"))


@glibc
def test_the_opt_out_leaves_glibc_its_own_rule() -> None:
    code = "from zmqworkers.heap import keep_large_buffers; print(keep_large_buffers())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    said = {}
    for value in ("0", "1"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**env, "ZMQWORKERS_TUNE_MALLOC": value},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        said[value] = out.stdout.strip()
    assert said == {"0": "False", "1": "True"}
