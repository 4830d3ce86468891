"""Files a controller leaves nowhere: its ipc folder and its connection file.

Both say too much once the controller is gone: the connection file holds the
key, and a stale ipc folder in ``$TMPDIR`` invites the next process to dial
sockets nobody serves. A :class:`Leftovers` removes what was added to it when
the controller closes, when it is garbage collected, at interpreter exit, and
when the process is ended by SIGTERM or SIGHUP, whose default action would
skip every exit handler. Only SIGKILL (which nothing can catch) leaves them.

The signal handlers are installed only where nobody else has one (the
handler is still the default) and only from the main thread, the one place
Python allows it. After removing the files they restore the default action
and send the signal again, so the process still ends as killed by it.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import weakref
from pathlib import Path
from typing import Any

CLEANUP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)

_live: weakref.WeakSet[Leftovers] = weakref.WeakSet()
_installed: set[int] = set()


def _remove(paths: list[tuple[str, int, int]]) -> None:
    while paths:
        path, dev, ino = paths.pop()
        try:
            st = os.lstat(path)
        except OSError:
            continue
        # Only what this process made: another controller may have written
        # its own connection file under the same name since.
        if (st.st_dev, st.st_ino) != (dev, ino):
            continue
        if Path(path).is_dir() and not Path(path).is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


def _on_signal(signum: int, frame: Any) -> None:
    for leftovers in list(_live):
        leftovers.remove_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in CLEANUP_SIGNALS:
        if signum in _installed:
            continue
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _on_signal)
            _installed.add(signum)


class Leftovers:
    """Paths to remove when their owner closes, or the process ends."""

    def __init__(self) -> None:
        # No lock: the signal handler runs this too, and a lock held by the
        # frame it interrupted would never be released. list.append and
        # list.pop are atomic, which is all the sharing needs.
        self._paths: list[tuple[str, int, int]] = []
        # Holds the list, not self: garbage collection and exit still run it.
        self._finalizer = weakref.finalize(self, _remove, self._paths)
        _live.add(self)
        _install_handlers()

    def add(self, path: str | os.PathLike[str]) -> None:
        """Remove ``path`` (a file or a folder tree) with the others."""
        try:
            st = os.lstat(path)
        except OSError:
            return
        self._paths.append((os.fspath(path), st.st_dev, st.st_ino))

    def remove_all(self) -> None:
        """Remove every path added so far (each at most once)."""
        _remove(self._paths)
