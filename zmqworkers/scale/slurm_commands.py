"""sbatch, squeue, sacct and scancel, each run with a timeout.

Every call is one subprocess; a command that fails or does not answer
raises :class:`~zmqworkers.errors.SlurmError` with what it printed. Job
states are Slurm's own names (``PENDING``, ``RUNNING``, ``TIMEOUT``, ...);
a job neither command knows any more is ``GONE``.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterable, Mapping

from zmqworkers.errors import SlurmError

log = logging.getLogger(__name__)

GONE = "GONE"
# States in which a job holds, or waits for, resources.
ALIVE_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}
)
PENDING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED"})
# Ends that are not the doing of the tasks a job's workers ran: its time ran
# out (the daemon drains before its walltime and then COMPLETES; TIMEOUT or
# DEADLINE if it did not make it), it was preempted, its node failed, or it
# was cancelled (by this controller or by an operator). FAILED (the daemon
# died, or gave up on children that crashed again and again),
# OUT_OF_MEMORY, and a job Slurm no longer knows (GONE) are not among them.
BLAMELESS_ENDS = frozenset(
    {"COMPLETED", "TIMEOUT", "DEADLINE", "PREEMPTED", "NODE_FAIL", "CANCELLED"}
)


class SlurmCommands:
    """The four commands, with one timeout and one environment."""

    def __init__(self, timeout: float = 30.0, env: Mapping[str, str] | None = None) -> None:
        self.timeout = timeout
        self.env = dict(env) if env is not None else None

    def _run(self, cmd: list[str], stdin: str | None = None) -> str:
        try:
            done = subprocess.run(
                cmd,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                env=self.env,
                check=False,
            )
        except FileNotFoundError as exc:
            raise SlurmError(f"{cmd[0]} is not installed or not on PATH") from exc
        except subprocess.TimeoutExpired as exc:
            raise SlurmError(f"{' '.join(cmd)} did not answer within {self.timeout:g} s") from exc
        if done.returncode != 0:
            raise SlurmError(
                f"{' '.join(cmd)} failed with status {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()}"
            )
        return done.stdout

    def submit(self, script: str, *, test_only: bool = False) -> str:
        """Submit ``script`` (given on stdin); return the job id.

        ``test_only`` asks sbatch whether and when the job would start,
        without submitting it, and returns what sbatch said.
        """
        if test_only:
            try:
                done = subprocess.run(
                    ["sbatch", "--test-only"],
                    input=script,
                    capture_output=True,
                    text=True,
                    timeout=self.timeout,
                    env=self.env,
                    check=False,
                )
            except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
                raise SlurmError(f"sbatch --test-only: {exc}") from exc
            if done.returncode != 0:
                raise SlurmError(f"sbatch --test-only refused the script: {done.stderr.strip()}")
            return (done.stderr + done.stdout).strip()
        out = self._run(["sbatch", "--parsable"], stdin=script).strip()
        job_id = out.split(";")[0]
        if not job_id.isdigit():
            raise SlurmError(f"sbatch answered {out!r}, not a job id")
        return job_id

    def states(self, job_ids: Iterable[str]) -> dict[str, str]:
        """Each job's state: from squeue, else from sacct, else ``GONE``."""
        ids = sorted(set(job_ids))
        if not ids:
            return {}
        found: dict[str, str] = {}
        try:
            out = self._run(["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i|%T"])
        except SlurmError as exc:
            # Every id asked for has been purged (MinJobAge): squeue refuses
            # the list instead of printing nothing.
            if "Invalid job id" not in str(exc):
                raise
            out = ""
        for line in out.splitlines():
            job, _, state = line.strip().partition("|")
            if job in ids:
                found[job] = state
        missing = [j for j in ids if j not in found]
        if missing:
            try:
                out = self._run(
                    ["sacct", "-n", "-P", "-X", "-j", ",".join(missing), "-o", "JobID,State"]
                )
            except SlurmError as exc:
                # No accounting storage: squeue's memory (MinJobAge) is all there is.
                log.debug("sacct: %s", exc)
                out = ""
            for line in out.splitlines():
                job, _, state = line.strip().partition("|")
                if job in missing and state:
                    found[job] = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
        return {j: found.get(j, GONE) for j in ids}

    def cancel(self, job_ids: Iterable[str], signal: str | None = None) -> None:
        """scancel the jobs; with ``signal`` (``"TERM"``), only signal their batch steps."""
        ids = sorted(set(job_ids))
        if not ids:
            return
        cmd = ["scancel"]
        if signal is not None:
            # Without --batch, Slurm sends signals other than KILL to the
            # job's steps only, and a daemon started by the batch script
            # itself is in none.
            cmd += [f"--signal={signal}", "--batch"]
        self._run([*cmd, *ids])
