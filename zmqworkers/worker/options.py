"""How a worker behaves: its options, and the exit status a supervisor reads."""

from __future__ import annotations

import re
from dataclasses import dataclass

from zmqworkers.protocol.liveness import HEARTBEAT_INTERVAL, HEARTBEAT_MISSES
from zmqworkers.protocol.messages import DEFAULT_MAX_MESSAGE_SIZE, check_limit
from zmqworkers.security.curve import DEFAULT_WORKER

# Exit status of a worker the controller refused for good (another version):
# a supervisor does not start it again.
EXIT_REFUSED = 3
# A worker that left to be replaced by a fresh process: after max_tasks
# calls, or over its memory limit after a call. Whoever started it starts
# another, and counts no crash.
# (Numbers far from the small ones a task's own os._exit() tends to use.)
EXIT_RECYCLED = 85
# A worker whose running call was cancelled or timed out: ended on the
# controller's word (an INTERRUPT) and replaced, no crash either.
EXIT_INTERRUPTED = 86
# A worker that went over its memory limit, by more than the margin, in the
# middle of a call: the call counts an attempt, as if the worker had died.
EXIT_MEMORY = 87
# The drain timeout a supervisor gives its children (seconds).
DRAIN_ENV = "ZMQWORKERS_DRAIN_TIMEOUT"
# The supervisor's pid: a child whose supervisor is gone leaves, as a local
# worker does when its controller is (its session no longer ends with the
# supervisor's process group).
SUPERVISOR_ENV = "ZMQWORKERS_SUPERVISOR_PID"
# Within a call, a process may go this far over max_memory before it is
# killed; between calls, anything over the limit recycles it.
MEMORY_MARGIN = 1.25

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}


def parse_size(value: int | str | None, what: str = "max_memory") -> int | None:
    """Bytes from ``2GiB``, ``300MB``, ``1.5G`` or a whole number; None stays None."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        n: float = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
        unit = m.group(2).lower() if m else ""
        if m is None or unit not in _UNITS:
            raise ValueError(
                f"{what} must be a size such as 2GiB, 300MB or 500000000, not {value!r}"
            )
        n = float(m.group(1)) * _UNITS[unit]
    else:
        raise ValueError(f"{what} must be a size such as 2GiB or a number of bytes, not {value!r}")
    if n <= 0:
        raise ValueError(f"{what} must be more than 0 bytes, not {value!r}")
    return int(n)


def format_size(n: int) -> str:
    """``2 GiB``, ``300 MB``: the unit the number is a whole multiple of, else bytes."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n % size == 0:
            return f"{n // size} {unit}"
    for unit, size in (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


@dataclass
class WorkerOptions:
    """How a worker behaves. Every interval is in seconds."""

    prefetch: int = 1
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    heartbeat_misses: int = HEARTBEAT_MISSES
    # A daemon goes back to waiting for a controller after a stop or a lost
    # controller; a local worker exits.
    daemon: bool = False
    # Exit when this process id is gone (local workers watch their controller).
    parent_pid: int | None = None
    # Daemon: exit after this long without a controller (None: never).
    death_timeout: float | None = None
    name: str | None = None
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    # CURVE directory and the name of this worker's certificate in it.
    curve_dir: str | None = None
    curve_name: str = DEFAULT_WORKER
    # After SIGTERM the running call may finish for this long; then it is
    # handed back unfinished and the worker leaves. Below Kubernetes' default
    # 30 s grace period, so the goodbye goes out before SIGKILL comes.
    drain_timeout: float = 25.0
    # Recycling: after this many calls the process leaves (handing back what
    # it holds) and is replaced; None: never.
    max_tasks: int | None = None
    # Bytes of resident memory: over it after a call, the process is
    # recycled; over it by MEMORY_MARGIN during a call, it is ended and the
    # call counts an attempt. None: no limit.
    max_memory: int | None = None

    def __post_init__(self) -> None:
        check_limit(self.max_message_size)
