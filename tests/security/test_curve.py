"""CURVE end to end: daemons with certificates, an unknown key refused, nothing in clear."""

from __future__ import annotations

import logging
import secrets
import shutil
import subprocess
import sys

import pytest
import zmq

from tests.conftest import wait_for
from tests.security.helpers import (
    ROOT,
    can_sniff,
    keygen,
    sniff_loopback,
    start_daemon,
    stop_process,
)
from zmqworkers import Cluster
from zmqworkers.errors import ConfigurationError

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")


def tag(text: str, marker: str) -> str:
    return f"{text}:{marker}"


def test_keygen_curve_layout_and_modes(tmp_path) -> None:
    keygen(tmp_path / "c")
    keygen(tmp_path / "c", "--name", "w2")
    c = tmp_path / "c"
    names = sorted(p.name for p in c.iterdir())
    assert names == [
        "authorized_workers",
        "controller.key",
        "controller.key_secret",
        "w2.key",
        "w2.key_secret",
        "worker.key",
        "worker.key_secret",
    ]
    assert sorted(p.name for p in (c / "authorized_workers").iterdir()) == ["w2.key", "worker.key"]
    for secret in c.glob("*.key_secret"):
        assert secret.stat().st_mode & 0o777 == 0o600, secret
    # The controller pair is made once: a second worker does not replace it.
    again = subprocess.run(
        [sys.executable, "-m", "zmqworkers", "keygen", "--curve", str(c)],
        env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 2 and "not overwriting" in again.stderr


def test_missing_certificates_are_named(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="controller.key_secret"):
        Cluster(0, curve_dir=tmp_path)


@pytest.mark.skipif(not can_sniff(), reason="needs a raw socket on lo (root or CAP_NET_RAW)")
def test_curve_daemons_known_joins_unknown_refused_nothing_in_clear(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    good = tmp_path / "good"
    keygen(good)
    # A worker with a certificate the controller has never seen, who knows
    # (and so trusts) the controller's public key.
    stranger = tmp_path / "stranger"
    keygen(stranger)
    shutil.copyfile(good / "controller.key", stranger / "controller.key")

    marker = f"MARKER-{secrets.token_hex(12)}"
    procs: list[subprocess.Popen[bytes]] = []
    with Cluster(0, curve_dir=good, heartbeat_interval=0.3) as cluster:
        try:
            procs.append(start_daemon(cluster.address, "--curve", str(good)))
            cluster.wait_for_workers(1, timeout=30)
            with sniff_loopback(max_seconds=60) as captured:
                futures = [cluster.submit(tag, f"t{i}", marker) for i in range(20)]
                results = [f.result(timeout=30) for f in futures]
            assert results == [f"t{i}:{marker}" for i in range(20)]
            assert len(captured) > 0, "the sniffer saw no traffic at all"
            assert marker.encode() not in captured, "the task payload crossed in clear"

            procs.append(start_daemon(cluster.address, "--curve", str(stranger)))
            wait_for(
                lambda: any("refused a worker" in r.getMessage() for r in caplog.records),
                timeout=30,
            )
            assert len(cluster.workers()) == 1
            assert procs[1].poll() is None, "the refused worker is still waiting, not crashed"
        finally:
            outputs = [stop_process(proc) for proc in procs]
    # The stranger says why it cannot join, too.
    stranger_err = outputs[1][1]
    assert b"refuses this worker's CURVE key" in stranger_err
    refusal = next(r for r in caplog.records if "refused a worker" in r.getMessage())
    stranger_key = (stranger / "worker.key").read_text()
    assert refusal.getMessage().split("key ")[1].split(" ")[0] in stranger_key


@pytest.mark.skipif(not can_sniff(), reason="needs a raw socket on lo (root or CAP_NET_RAW)")
def test_sniffer_sees_the_marker_without_curve() -> None:
    # The control experiment: the same capture does see a plain payload, so
    # its silence under CURVE means something. A daemon, like the CURVE
    # test's: local workers would talk over ipc, which no capture on lo sees.
    marker = f"MARKER-{secrets.token_hex(12)}"
    key = secrets.token_hex(32)
    with Cluster(0, key=key) as cluster:
        proc = start_daemon(cluster.address, env={"ZMQWORKERS_KEY": key})
        try:
            cluster.wait_for_workers(1, timeout=30)
            with sniff_loopback(max_seconds=60) as captured:
                assert cluster.submit(tag, "t", marker).result(timeout=30) == f"t:{marker}"
        finally:
            stop_process(proc)
    assert marker.encode() in captured


def test_local_workers_join_a_curve_controller(tmp_path) -> None:
    keygen(tmp_path / "c")
    with Cluster(2, curve_dir=tmp_path / "c") as cluster:
        cluster.wait_for_workers(2, timeout=30)
        assert list(cluster.map(abs, range(-20, 0))) == list(range(20, 0, -1))
