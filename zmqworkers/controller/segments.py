"""The controller's shared-memory segments: one prefix per engine, swept at close.

Every segment of a session with a local worker, written by either side, is
named ``zmqw-<pid namespace>.<controller pid>-<engine token>-<session>-<random>``
(protocol/segments.py). Names live as long as their session: each end
reuses the segments it writes, and the receiver maps them without removing
them. A session's names go when it ends (``end_segments``: the worker left
or was lost), so what is left under the engine's prefix at close is what a
session still held; the engine removes those when it closes, after its
local workers have ended (none can write any more), and at interpreter exit.

A controller killed with SIGKILL cannot; the next controller to start on
the host removes the segments of this user's controllers that no longer
run (the pid in the name no longer exists).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import weakref

from zmqworkers.protocol import segments
from zmqworkers.worker.group import pid_exists

log = logging.getLogger(__name__)

_OWNER = re.compile(r"zmqw-([0-9]+)\.([0-9]+)-")


class SegmentSpace:
    """The segment prefix of one engine, and its sweep."""

    def __init__(self) -> None:
        self.prefix = f"{segments.owner_prefix()}{secrets.token_hex(6)}-"
        self._finalizer = weakref.finalize(self, segments.sweep, self.prefix)
        sweep_orphans()

    @classmethod
    def open(cls) -> SegmentSpace | None:
        """A space for a new engine, or None where the host has no shared memory."""
        return cls() if segments.available() else None

    def close(self) -> int:
        """Remove what is left under the prefix; how many segments that was."""
        self._finalizer.detach()
        left = segments.sweep(self.prefix)
        if left:
            log.debug("removed %d shared-memory segment(s) nobody read", left)
        return left


def sweep_orphans() -> int:
    """Remove this user's segments whose controller process no longer runs.

    Only names of this pid namespace: another one's pids mean nothing here.
    """
    try:
        names = os.listdir(segments.SHM_DIR)
    except OSError:
        return 0
    ours = segments.owner_prefix(0).split(".")[0]  # zmqw-<pid namespace>
    dead: list[str] = []
    alive: dict[int, bool] = {}
    for name in names:
        m = _OWNER.match(name)
        if m is None or f"zmqw-{m.group(1)}" != ours:
            continue
        pid = int(m.group(2))
        if pid not in alive:
            # Another user's process counts as running: its names are not ours anyway.
            alive[pid] = pid_exists(pid)
        if not alive[pid]:
            dead.append(name)
    segments.remove_owned(dead)
    return len(dead)


def end_segments(link: segments.SegmentLink) -> None:
    """A session has ended: its segments, written by either side, go.

    Views the controller still holds (results not yet dropped) keep their
    memory; a late message that names a removed segment fails to decode, and
    its tasks, already put back when the worker was lost, run again.
    """
    link.close()
    segments.sweep(link.prefix)
