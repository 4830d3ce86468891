"""Starting and ending `zmqworkers worker` daemons from tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def subprocess_env() -> dict[str, str]:
    """The environment a subprocess needs to import the code under test."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("ZMQWORKERS_KEY", None)
    return env


class Daemon:
    """One `zmqworkers worker` process (and its children), owned by a test."""

    def __init__(self, args: Sequence[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        # A session of its own: teardown ends the daemon and every child it
        # started, by the group id of the process this test started.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zmqworkers", "worker", *args],
            env=subprocess_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        # A supervisor's worker processes lead process groups of their own:
        # each group is killed, not only the daemon's.
        groups = [self.proc.pid] + [p.pid for p in _children(self.proc.pid)]
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._log.close()


def _children(pid: int) -> list[Any]:
    import psutil

    try:
        return list(psutil.Process(pid).children())
    except psutil.NoSuchProcess:
        return []
