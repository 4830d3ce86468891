"""Connection files and `zmqworkers info` against a live controller."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_for
from tests.deploy.helpers import Daemon, subprocess_env
from zmqworkers import Cluster, ConfigurationError
from zmqworkers.protocol import PROTOCOL_VERSION
from zmqworkers.security.connection import advertised_address, is_local_link, read_connection_file


def test_connection_file_is_private_and_complete(tmp_path: Path) -> None:
    path = tmp_path / "conn.json"
    c = Cluster(0, key="s" * 32, connection_file=path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        data = json.loads(path.read_text())
        assert data["address"] == c.address
        assert data["key"] == "s" * 32
        assert data["protocol"] == PROTOCOL_VERSION
        info = read_connection_file(path)
        assert (info.address, info.key) == (c.address, b"s" * 32)
    finally:
        c.shutdown()
    assert not [p for p in tmp_path.iterdir() if p.name != "conn.json"]  # no temp left over


def test_bad_connection_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    bad.chmod(0o600)
    with pytest.raises(ConfigurationError, match="is not JSON"):
        read_connection_file(bad)
    bad.write_text(json.dumps({"address": "tcp://h:1", "key": "x" * 32, "protocol": 99}))
    with pytest.raises(
        ConfigurationError, match=f"protocol 99.*speaks protocol {PROTOCOL_VERSION}"
    ):
        read_connection_file(bad)
    with pytest.raises(ConfigurationError, match="cannot read"):
        read_connection_file(tmp_path / "missing.json")


def test_wildcard_bind_advertises_the_host_name() -> None:
    import socket

    assert advertised_address("tcp://0.0.0.0:5555") == f"tcp://{socket.getfqdn()}:5555"
    assert advertised_address("tcp://127.0.0.1:5555") == "tcp://127.0.0.1:5555"


def test_info_lists_daemon_and_local_workers(tmp_path: Path) -> None:
    conn = tmp_path / "conn.json"
    # Local and remote workers mixed: one local process, one daemon of two.
    c = Cluster(1, connection_file=conn)
    d = Daemon(
        ["--connection-file", str(conn), "--processes", "2", "--name", "dd"], tmp_path / "d.log"
    )
    try:
        c.wait_for_workers(3, timeout=30)
        assert sorted(x * 3 for x in range(300)) == sorted(c.map((3).__mul__, range(300)))
        wait_for(lambda: sum(w["tasks_done"] for w in c.workers()) == 300, timeout=10)
        out = subprocess.run(
            [sys.executable, "-m", "zmqworkers", "info", "--connection-file", str(conn)],
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert "3 worker(s)" in lines[0]
        assert lines[1].split() == ["ID", "HOST", "PID", "STATE", "DONE", "HELD", "RSS", "CPU"]
        rows = {r.split()[0]: r.split() for r in lines[2:]}
        for w in c.workers():
            row = rows[w["id"]]
            assert row[1:5] == [w["host"], str(w["pid"]), w["state"], str(w["tasks_done"])]
        assert {"dd-0", "dd-1"} <= set(rows)
        assert sum(int(r[4]) for r in rows.values()) == 300
        # The wrong key gets no answer, and says so.
        env = subprocess_env()
        env["ZMQWORKERS_KEY"] = "w" * 32
        wrong = subprocess.run(
            [sys.executable, "-m", "zmqworkers", "info", c.address, "--timeout", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert wrong.returncode == 1 and "no answer" in wrong.stderr
        assert c.counters()["dropped"].get("signature", 0) >= 1
    finally:
        d.stop()
        c.shutdown(wait=False, cancel_futures=True)
    # It holds the key: gone with the controller.
    assert not os.path.exists(conn)


def _three_free_ports() -> int:
    """A port P with P, P+1 and P+2 free on loopback (bounded tries)."""
    import random
    import socket

    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(20000, 60000)
        socks = []
        try:
            for p in range(base, base + 3):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    pytest.skip("found no three consecutive free ports")


def test_fixed_port_takes_three_consecutive_ports(tmp_path: Path) -> None:
    base = _three_free_ports()
    conn = tmp_path / "conn.json"
    c = Cluster(0, bind=f"tcp://127.0.0.1:{base}", connection_file=conn)
    d = Daemon(["--connection-file", str(conn), "--name", "fx"], tmp_path / "fx.log")
    try:
        assert c.address == f"tcp://127.0.0.1:{base}"
        assert read_connection_file(conn).address == c.address
        c.wait_for_workers(1, timeout=30)
        assert list(c.map(abs, [-1, -2])) == [1, 2]
        # The worker's sockets are connected to exactly P, P+1 and P+2.
        conns = {
            k.raddr.port
            for k in psutil.Process(c.workers()[0]["pid"]).net_connections("tcp")
            if k.raddr and k.status == "ESTABLISHED"
        }
        assert conns == {base, base + 1, base + 2}, conns
    finally:
        d.stop()
        c.shutdown(wait=False, cancel_futures=True)


def _worker_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = subprocess_env()
    env["ZMQWORKERS_KEY"] = "k" * 32
    return subprocess.run(
        [sys.executable, "-m", "zmqworkers", "worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("bad", ["node1:5555", "tcp://node1", "tcp://:5555", "http://x:1"])
def test_worker_refuses_an_address_it_cannot_dial(bad: str) -> None:
    done = _worker_cli(bad)
    assert done.returncode == 2
    assert f"{bad!r} is not a controller address: give tcp://HOST:PORT" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--processes", "0", "--processes must be 1 or more, not 0"),
        ("--lifetime", "-5", "--lifetime: '-5' is not a finite number of seconds > 0"),
        ("--lifetime", "inf", "--lifetime: 'inf' is not a finite number of seconds > 0"),
        ("--drain-timeout", "-1", "--drain-timeout: '-1' is not a finite number of seconds >= 0"),
        ("--death-timeout", "nan", "--death-timeout: 'nan' is not a finite number of seconds"),
        ("--heartbeat-misses", "0", "--heartbeat-misses must be 1 or more, not 0"),
    ],
)
def test_worker_refuses_bad_numbers(option: str, value: str, message: str) -> None:
    done = _worker_cli("tcp://127.0.0.1:9", option, value)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_daemon_started_first_waits_for_the_connection_file(tmp_path: Path) -> None:
    conn = tmp_path / "later.json"
    d = Daemon(
        ["--connection-file", str(conn), "--name", "early", "--log-level", "INFO"],
        tmp_path / "early.log",
    )
    try:
        # The daemon is up before the controller, as in a batch job.
        wait_for(lambda: "waiting up to 300 s for connection file" in d.log(), timeout=30)
        with Cluster(0, connection_file=conn) as c:
            c.wait_for_workers(1, timeout=30)
            assert c.workers()[0]["id"] == "early"
            assert list(c.map(abs, [-3])) == [3]
    finally:
        d.stop()


def test_connection_file_that_never_comes_is_a_clear_error(tmp_path: Path) -> None:
    done = _worker_cli(
        "--connection-file", str(tmp_path / "never.json"), "--connection-wait", "0.3"
    )
    assert done.returncode == 2
    assert "never.json did not appear within 0.3 s" in done.stderr


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.8.9.10:5555", True),
        ("tcp://[::1]:5555", True),
        ("tcp://localhost:5555", True),
        ("ipc:///tmp/x/tasks", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://10.1.2.3:5555", False),
        ("tcp://node1:5555", False),
        ("tcp://127.evil.example:5555", False),  # a name, not an address
        ("tcp://127.0.0.1:0;10.1.2.3:5555", False),  # source;destination
    ],
)
def test_only_addresses_this_kernel_alone_carries_are_local_links(address, local) -> None:
    assert is_local_link(address) is local
