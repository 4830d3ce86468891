"""Key and connection files that another user could have written are refused."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.helpers import subprocess_env
from zmqworkers import Cluster
from zmqworkers.errors import ConfigurationError
from zmqworkers.security.connection import read_connection_file, write_connection_file
from zmqworkers.security.keys import read_key_file, write_key_file

KEY = "file-trust-key-0123456789abcdef"


def _worker(*args: str) -> subprocess.CompletedProcess[str]:
    # --death-timeout: code that trusts the file dials the address in it and
    # must end too, so the test fails instead of hanging.
    return subprocess.run(
        [sys.executable, "-m", "zmqworkers", "worker", *args, "--death-timeout", "3"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def controller(tmp_path: Path):
    with Cluster(0, key=KEY) as c:
        yield c


def _connection_file(folder: Path, address: str, mode: int) -> Path:
    folder.mkdir(exist_ok=True)
    path = write_connection_file(folder / "conn.json", address, KEY.encode())
    path.chmod(mode)
    return path


def test_writable_connection_file_is_refused_with_the_fix(tmp_path: Path, controller) -> None:
    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    path = _connection_file(folder, controller.address, 0o666)
    out = _worker("--connection-file", str(path))
    assert out.returncode == 2, out.stderr
    assert "writable by group or others (mode 0666)" in out.stderr
    assert f"chmod go-w {path}" in out.stderr
    assert controller.workers() == []


def test_connection_file_in_a_folder_anyone_can_write_is_refused(
    tmp_path: Path, controller
) -> None:
    folder = tmp_path / "shared"
    path = _connection_file(folder, controller.address, 0o600)
    folder.chmod(0o777)  # opened to everyone after it was written
    out = _worker("--connection-file", str(path))
    assert out.returncode == 2, out.stderr
    assert f"in folder {folder}" in out.stderr and f"chmod go-w {folder}" in out.stderr
    assert controller.workers() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_connection_file_of_another_user_is_refused_by_a_root_daemon(
    tmp_path: Path, controller
) -> None:
    path = _connection_file(tmp_path / "f", controller.address, 0o600)
    os.chown(path, 65534, 65534)  # nobody
    out = _worker("--connection-file", str(path))
    assert out.returncode == 2, out.stderr
    assert "is owned by" in out.stderr and "not by root" in out.stderr
    assert controller.workers() == []


def test_key_file_readable_by_others_is_refused(tmp_path: Path, controller) -> None:
    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    key.chmod(0o644)
    out = _worker(controller.address, "--key-file", str(key))
    assert out.returncode == 2, out.stderr
    assert "readable by group or others (mode 0644)" in out.stderr
    assert f"chmod 600 {key}" in out.stderr
    with pytest.raises(ConfigurationError, match="readable by group or others"):
        Cluster(0, key_file=key)


def test_files_as_written_pass_and_a_sticky_folder_is_fine(tmp_path: Path) -> None:
    key = write_key_file(tmp_path / "key")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(read_key_file(key)) == 64
    # Like /tmp: others may add names there, but not replace ours.
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    path = write_connection_file(sticky / "conn.json", "tcp://127.0.0.1:5555", KEY.encode())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_connection_file(path).key == KEY.encode()


def test_controller_refuses_to_write_its_connection_file_where_others_could_swap_it(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    with pytest.raises(ConfigurationError, match=f"chmod go-w {folder}"):
        Cluster(0, key=KEY, connection_file=folder / "conn.json")
    assert list(folder.iterdir()) == []
