"""A worker's process group: the processes its tasks start end with it.

A worker started by a controller (``controller/launcher.py``: spawned with
``start_new_session``, or forked by the fork server, ``worker/zygote.py``,
whose child calls ``setsid``) or by a daemon's supervisor
(``worker/daemon.py``) leads a session, and so a process group, of its
own. Whatever its tasks fork joins that group, also a child that
double-forks, ignores SIGTERM or keeps the caller's output pipe open.
When the worker ends, its parent kills the group; a worker whose parent
died first (an orphan that ends itself) kills the rest of its group on
the way out. A task that means a process to outlive its worker starts
it in a session of its own (``start_new_session=True``).

The group is not killed after each task: a task may keep a helper process
for the next ones (a pool in a module global, multiprocessing's resource
tracker), and looking for leftovers after every call would cost tiny tasks
more than they take.
"""

from __future__ import annotations

import os
import signal

SIGKILL = getattr(signal, "SIGKILL", signal.SIGTERM)


def pid_exists(pid: int) -> bool:
    """Whether a process numbered ``pid`` exists (a zombie, not yet reaped, counts).

    Another user's process exists too: signalling it is refused, not
    unanswered.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(pgid: int) -> None:
    """Kill what is left of the group a worker led, once the worker has ended.

    The group's id is the worker's pid. While a member is alive the kernel
    gives that number to no new process; once none is, the signal finds no
    group. So the worker may already have been reaped.
    """
    try:
        os.killpg(pgid, SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left, or not a group this process made


def kill_rest_of_group() -> int:
    """From the worker itself: kill every other process of its group.

    Only for a worker that leads a session of its own (started by a
    controller or a supervisor); one started from a shell shares its group
    with the shell's job, which is not ours to end. Reads ``/proc`` (Linux);
    elsewhere the parent's :func:`kill_group` is all there is. Returns how
    many processes were signalled.
    """
    me = os.getpid()
    try:
        if os.getsid(0) != me:
            return 0
        names = os.listdir("/proc")
    except OSError:
        return 0
    killed = 0
    # Another round for what a member forked while the first was read.
    for _ in range(3):
        found = [pid for pid in _pids(names) if pid != me and _group_of(pid) == me]
        for pid in found:
            try:
                os.kill(pid, SIGKILL)
                killed += 1
            except OSError:
                pass
        if not found:
            break
        names = os.listdir("/proc")
    return killed


def _pids(names: list[str]) -> list[int]:
    return [int(n) for n in names if n.isdigit()]


def _group_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    fields = stat.rsplit(b")", 1)[-1].split()
    try:
        return int(fields[2])
    except (IndexError, ValueError):
        return None
