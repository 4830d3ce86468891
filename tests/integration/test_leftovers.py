"""A controller leaves neither its ipc folder nor its connection file behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.deploy.helpers import subprocess_env
from zmqworkers import Cluster

KEY = "leftovers-key-0123456789abcdef"

# Prints where its ipc folder is, then waits to be ended by a signal.
CONTROLLER = textwrap.dedent(
    """
    import sys, time
    from zmqworkers import Cluster
    c = Cluster(1, key=sys.argv[2], connection_file=sys.argv[1])
    assert c.submit(abs, -1).result(60) == 1
    print(c._engine.local_address, flush=True)
    time.sleep(120)
    """
)


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGHUP])
def test_signal_removes_ipc_folder_and_connection_file(tmp_path: Path, signo: int) -> None:
    conn = tmp_path / "c.json"
    env = subprocess_env()
    env["TMPDIR"] = str(tmp_path)  # where the ipc folder goes
    proc = subprocess.Popen(
        [sys.executable, "-c", CONTROLLER, str(conn), KEY],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        assert address.startswith(f"ipc://{tmp_path}/zmqworkers-"), proc.stderr.read()
        folder = Path(address.removeprefix("ipc://")).parent
        assert folder.is_dir() and json.loads(conn.read_text())["key"] == KEY
        proc.send_signal(signo)
        # Still ended by the signal, as without the clean-up.
        assert proc.wait(30) == -signo
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert not folder.exists()
    assert not conn.exists()


def test_shutdown_removes_the_connection_file_but_not_a_newer_one(tmp_path: Path) -> None:
    conn = tmp_path / "c.json"
    with Cluster(0, key=KEY, connection_file=conn):
        wait_for(conn.exists)
    assert not conn.exists()
    # A second controller wrote the same name meanwhile: the first leaves it.
    first = Cluster(0, key=KEY, connection_file=conn)
    try:
        with Cluster(0, key=KEY, connection_file=conn) as second:
            first.shutdown()
            assert json.loads(conn.read_text())["address"] == second.address
    finally:
        first.shutdown()
    assert not conn.exists()
