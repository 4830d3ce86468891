"""Local workers: the worker program as subprocesses on loopback."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import subprocess
import sys

from zmqworkers.security.keys import KEY_ENV
from zmqworkers.worker.mp_authkey import MP_AUTHKEY_ENV

log = logging.getLogger(__name__)


def start_local_worker(
    address: str, key: bytes, *, prefetch: int = 1, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start one worker process connected to ``address``.

    The key travels in the environment, never in argv, where any user of the
    machine could read it from the process list.
    """
    env = dict(os.environ)
    env[KEY_ENV] = key.decode()
    env[MP_AUTHKEY_ENV] = bytes(multiprocessing.current_process().authkey).hex()
    if extra_env:
        env.update(extra_env)
    cmd = [
        sys.executable,
        "-m",
        "zmqworkers.worker",
        address,
        "--parent-pid",
        str(os.getpid()),
        "--prefetch",
        str(prefetch),
    ]
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, close_fds=True)


def describe_exit(returncode: int) -> str:
    """Say how a process ended, and the likely cause where there is one."""
    if returncode < 0:
        signo = -returncode
        try:
            name = signal.Signals(signo).name
        except ValueError:
            name = f"signal {signo}"
        hint = {
            "SIGKILL": ": out of memory, or killed by hand?",
            "SIGSEGV": ": a crash in compiled code?",
            "SIGABRT": ": an abort in compiled code?",
            "SIGBUS": ": a bad memory mapping?",
        }.get(name, "")
        return f"killed by {name}{hint}"
    if returncode == 0:
        return "exited with code 0 before it was asked to"
    return f"exited with code {returncode}"
