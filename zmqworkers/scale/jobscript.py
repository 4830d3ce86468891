"""What one worker job is: its options, and the batch script sbatch gets.

The script holds no secret: the daemon reads the controller's address and
key from the connection file, a mode-0600 file on a directory the compute
nodes share (security/connection.py), whose path alone is in the script.
"""

from __future__ import annotations

import math
import re
import shlex
import sys
from dataclasses import dataclass

from zmqworkers.errors import ConfigurationError

# Worker ids are WORKER_PREFIX<job id>-<slot>: the controller tells a job's
# workers by this prefix (SlurmJobs.prefix_of).
WORKER_PREFIX = "slurm"
# Seconds kept between the daemon's own end and the walltime: the batch
# shell and Slurm's epilogue still have to run.
WALLTIME_MARGIN = 10.0

_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def walltime_seconds(text: str) -> float:
    """Slurm's time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    m = _WALLTIME.match(text.strip())
    if not m:
        raise ConfigurationError(
            f"walltime {text!r} is not a Slurm time: give MINUTES, MM:SS, HH:MM:SS or D-HH:MM:SS"
        )
    days, a, b, c = m.groups()
    nums = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-H, D-H:M, D-H:M:S
        h, mi, s = (nums + [0, 0])[:3]
        return float(int(days) * 86400 + h * 3600 + mi * 60 + s)
    if len(nums) == 1:
        return float(nums[0] * 60)
    if len(nums) == 2:
        return float(nums[0] * 60 + nums[1])
    return float(nums[0] * 3600 + nums[1] * 60 + nums[2])


@dataclass(frozen=True)
class JobOptions:
    """One worker job: a ``zmqworkers worker`` daemon with ``processes`` processes.

    ``cores`` (default: ``processes``) is ``--cpus-per-task``; ``memory`` is
    ``--mem`` (``"4G"``); ``directives`` are extra ``#SBATCH`` lines (with or
    without the prefix); ``setup`` lines run before the daemon (``module load
    ...``, ``source venv/bin/activate``); ``python`` runs the daemon.
    The daemon drains ``drain_timeout`` s before the walltime ends, and
    leaves after ``death_timeout`` s without a controller.
    """

    processes: int = 1
    cores: int | None = None
    memory: str | None = None
    walltime: str = "01:00:00"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    job_name: str = "zmqworkers"
    directives: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    python: str = sys.executable
    output: str = "/dev/null"
    prefetch: int = 1
    drain_timeout: float = 60.0
    death_timeout: float = 300.0

    def __post_init__(self) -> None:
        for name, low in (("processes", 1), ("prefetch", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigurationError(f"{name} must be a whole number >= {low}, not {v!r}")
        if self.cores is not None and (not isinstance(self.cores, int) or self.cores < 1):
            raise ConfigurationError(f"cores must be a whole number >= 1, not {self.cores!r}")
        for name in ("drain_timeout", "death_timeout"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise ConfigurationError(f"{name} must be a number of seconds > 0, not {v!r}")
        walltime_seconds(self.walltime)
        for name in ("memory", "partition", "account", "qos", "job_name"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v or any(c.isspace() for c in v)):
                raise ConfigurationError(f"{name} must be one word, not {v!r}")
        for line in (*self.directives, *self.setup):
            if not isinstance(line, str) or "\n" in line:
                raise ConfigurationError(f"directives and setup are lines, not {line!r}")
        if isinstance(self.directives, str) or isinstance(self.setup, str):
            raise ConfigurationError("directives and setup are sequences of lines, not one string")

    @property
    def lifetime(self) -> float:
        """The daemon's --lifetime: the walltime less a margin for the shell."""
        total = walltime_seconds(self.walltime)
        return max(1.0, total - min(WALLTIME_MARGIN, total / 4))


def job_script(options: JobOptions, connection_file: str) -> str:
    """The batch script, exactly as sbatch gets it."""
    o = options
    q = shlex.quote
    lines = ["#!/bin/bash", f"#SBATCH --job-name={o.job_name}", "#SBATCH --nodes=1"]
    lines += ["#SBATCH --ntasks=1", f"#SBATCH --cpus-per-task={o.cores or o.processes}"]
    lines.append(f"#SBATCH --time={o.walltime}")
    for flag, value in (("mem", o.memory), ("partition", o.partition)):
        if value:
            lines.append(f"#SBATCH --{flag}={value}")
    for flag, value in (("account", o.account), ("qos", o.qos)):
        if value:
            lines.append(f"#SBATCH --{flag}={value}")
    lines.append(f"#SBATCH --output={o.output}")
    for d in o.directives:
        d = d.strip()
        lines.append(d if d.startswith("#SBATCH") else f"#SBATCH {d}")
    lines += ["set -eu", *o.setup]
    daemon = [
        q(o.python), "-m", "zmqworkers", "worker",
        "--connection-file", q(connection_file),
        "--connection-wait", f"{o.death_timeout:g}",
        "--death-timeout", f"{o.death_timeout:g}",
        "--processes", str(o.processes),
        "--prefetch", str(o.prefetch),
        "--drain-timeout", f"{o.drain_timeout:g}",
        "--lifetime", f"{o.lifetime:g}",
        "--name", f'"{WORKER_PREFIX}${{SLURM_JOB_ID}}"',
    ]  # fmt: skip
    # exec: the daemon is the batch step itself, so `scancel --signal=TERM
    # --batch` reaches it and its drain, and its exit status is the job's.
    lines.append("exec " + " ".join(daemon))
    return "\n".join(lines) + "\n"
