"""Task functions of the monitor tests; no Qt here, workers import it."""

from __future__ import annotations

import os
import time


def gated(task: int, gate: str, free: int, bad: tuple[int, ...] = ()) -> int:
    """Tasks below ``free`` return at once; the others wait (at most 60 s) for file ``gate``.

    A run of them stays in a known state mid-way for as long as a test needs.
    """
    if task < free:
        # Long enough that the controller sends tasks one by one rather than
        # batching them as tiny ones (a batch would hold these behind gated ones).
        time.sleep(0.02)
    else:
        deadline = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.02)
    if task in bad:
        raise ValueError(f"task {task} is bad")
    return task * 10
