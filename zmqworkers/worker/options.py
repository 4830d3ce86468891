"""How a worker behaves: its options, and the exit status a supervisor reads."""

from __future__ import annotations

from dataclasses import dataclass

from zmqworkers.protocol.liveness import HEARTBEAT_INTERVAL, HEARTBEAT_MISSES
from zmqworkers.protocol.messages import DEFAULT_MAX_MESSAGE_SIZE, check_limit
from zmqworkers.security.curve import DEFAULT_WORKER

# Exit status of a worker the controller refused for good (another version):
# a supervisor does not start it again.
EXIT_REFUSED = 3


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

    def __post_init__(self) -> None:
        check_limit(self.max_message_size)
