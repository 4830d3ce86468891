"""Which key and connection files this process may trust, in one rule.

A connection file says which controller to serve, and a key file is the
authority itself, so a file that another user could have written (or read)
is refused before a byte of it is used, as ssh does with ``StrictModes``:

- the file is owned by this process's user or by root;
- nobody but its owner can write it (group and others have no ``w``);
- a key file (``secret=True``) is not readable by group or others either;
- every folder above it is owned by this user or root and is not writable
  by group or others, unless it is sticky (like ``/tmp``), where nobody can
  rename or remove another user's file.

Every refusal is a :class:`~zmqworkers.errors.ConfigurationError` that names
the file, what is wrong and the command that fixes it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from zmqworkers.errors import ConfigurationError

GROUP_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH
GROUP_OTHER_READ = stat.S_IRGRP | stat.S_IROTH


def _user(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f"uid {uid}"


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def read_trusted_text(path: str | os.PathLike[str], what: str, *, secret: bool = False) -> str:
    """The text of ``path``, if only this user (or root) could have written it.

    ``what`` names the file in messages ("key file", "connection file").
    The modes are judged on the open file, so the file read is the file
    checked even if someone swaps the name in between.
    """
    p = Path(path).expanduser()
    try:
        with open(p, encoding="utf-8") as f:
            if os.name == "posix":  # elsewhere no owners and modes to judge by
                _check_file(os.fstat(f.fileno()), what, p, secret)
                # The folders of a symbolic link and of what it points to.
                for folder in dict.fromkeys((p.absolute().parent, p.resolve().parent)):
                    _check_folders(folder, what, p)
            return f.read()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {p}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{what} {p} is not UTF-8 text: {exc}") from exc


def _check_file(st: os.stat_result, what: str, p: Path, secret: bool) -> None:
    me = _user(os.geteuid())
    if not _trusted_owner(st.st_uid):
        raise ConfigurationError(
            f"{what} {p} is owned by {_user(st.st_uid)}, not by {me} or root: another user "
            f"could have written it. Make it your own (`chown {me} {p}`, or write it "
            "again as this user)"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & GROUP_OTHER_WRITE:
        raise ConfigurationError(
            f"{what} {p} is writable by group or others (mode {mode:04o}): another user "
            f"could change it. Fix: chmod go-w {p}"
        )
    if secret and mode & GROUP_OTHER_READ:
        raise ConfigurationError(
            f"{what} {p} is readable by group or others (mode {mode:04o}): it holds the "
            f"key, which must stay secret. Fix: chmod 600 {p} (and make a new key if "
            "others may have read it)"
        )


def _check_folders(folder: Path, what: str, file: Path) -> None:
    # Each folder up to / counts: whoever may rename entries in any of them
    # can swap in a file of their own under the same path.
    for d in (folder, *folder.parents):
        try:
            st = os.stat(d)
        except OSError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if not _trusted_owner(st.st_uid):
            raise ConfigurationError(
                f"{what} {file} is in folder {d}, owned by {_user(st.st_uid)}, who could "
                f"replace the file: keep it in a folder of {_user(os.geteuid())} or root"
            )
        if mode & GROUP_OTHER_WRITE and not mode & stat.S_ISVTX:
            raise ConfigurationError(
                f"{what} {file} is in folder {d}, which group or others can write "
                f"(mode {mode:04o}): they could replace the file. Fix: chmod go-w {d} "
                f"(or chmod +t {d})"
            )
