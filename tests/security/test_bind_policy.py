"""Bind policy: loopback by default; elsewhere a key, CURVE or an explicit insecure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.security.helpers import ROOT
from zmqworkers import Cluster
from zmqworkers.errors import ConfigurationError


def test_binding_all_interfaces_without_a_key_says_how_to_fix_it(monkeypatch) -> None:
    monkeypatch.delenv("ZMQWORKERS_KEY", raising=False)
    with pytest.raises(ConfigurationError) as info:
        Cluster(0, bind="tcp://0.0.0.0:0")
    text = str(info.value)
    assert "tcp://0.0.0.0:0" in text
    for fix in ("key_file=", "zmqworkers keygen FILE", "curve_dir=", "insecure=True"):
        assert fix in text, fix


def test_loopback_needs_nothing_and_a_key_allows_any_address(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("ZMQWORKERS_KEY", raising=False)
    with Cluster(0) as c:
        assert c.address.startswith("tcp://127.0.0.1:")
    # Checked before anything binds: a key lifts the refusal. (Binding is
    # done on loopback here; the policy, not the interface, is under test.)
    from zmqworkers.controller.options import EngineOptions, apply_bind_policy

    opts = EngineOptions(bind="tcp://0.0.0.0:0", key=b"k" * 32, key_given=True)
    apply_bind_policy(opts)  # raises if refused
    opts = EngineOptions(bind="tcp://0.0.0.0:0", key=b"k" * 32)
    with pytest.raises(ConfigurationError):
        apply_bind_policy(opts)


def test_worker_without_any_key_says_how_to_fix_it() -> None:
    env = {"PYTHONPATH": ROOT, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    out = subprocess.run(
        [sys.executable, "-m", "zmqworkers", "worker", "tcp://127.0.0.1:1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "--key-file" in out.stderr and "ZMQWORKERS_KEY" in out.stderr


INSECURE_RUN = textwrap.dedent(
    """
    import logging, subprocess, sys
    logging.basicConfig(level=logging.WARNING)
    from zmqworkers import Cluster
    with Cluster(0, bind="tcp://0.0.0.0:0", insecure=True) as c:
        port = c.address.rsplit(":", 1)[1]
        w = subprocess.Popen([sys.executable, "-m", "zmqworkers", "worker",
                              "tcp://127.0.0.1:" + port, "--insecure"])
        try:
            c.wait_for_workers(1, timeout=30)
            print("RESULT", list(c.map(abs, [-1, -2, -3])), flush=True)
        finally:
            w.terminate()
            w.wait(10)
    """
)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None,
    reason="needs root with unshare and ip, to bind 0.0.0.0 in a private network namespace",
)
def test_insecure_works_end_to_end_with_the_well_known_key_and_warns() -> None:
    # In a network namespace of its own, 0.0.0.0 reaches nothing but its loopback.
    env = {"PYTHONPATH": ROOT, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.pop("ZMQWORKERS_KEY", None)
    script = 'ip link set lo up && exec "$0" -c "$1"'
    out = subprocess.run(
        ["unshare", "--net", "sh", "-c", script, sys.executable, INSECURE_RUN],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr
    assert "RESULT [1, 2, 3]" in out.stdout
    # Both sides say loudly what they are doing.
    assert "INSECURE: binding tcp://0.0.0.0:0" in out.stderr
    assert "INSECURE: using the well-known insecure key" in out.stderr


@pytest.mark.parametrize(
    "bad", ["udp://127.0.0.1:5999", "garbage", "tcp://127.0.0.1:*", "tcp://:5555", "ipc://"]
)
def test_an_address_nobody_can_bind_is_refused_by_name(bad: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Cluster(0, bind=bad, key="k" * 32)
    assert f"cannot bind {bad!r}" in str(info.value)
    assert "tcp://HOST:PORT" in str(info.value)
