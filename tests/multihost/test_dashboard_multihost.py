"""Watching across hosts: the dashboard's token asked of another host; task logs from a daemon."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.multihost.conftest import PORT, host_env, start_worker
from tests.multihost.netns import Network

pytestmark = [pytest.mark.multihost, pytest.mark.slow]

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(HERE, "dashboard_job.py")
LOG_JOB = os.path.join(HERE, "remote_log_job.py")
# Run on the other host: prints the HTTP status of a GET (or a POST with "post").
FETCH = """
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], data=b"x" if len(sys.argv) > 2 else None)
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
        print(r.status, b"<html" in body)
except urllib.error.HTTPError as e:
    print(e.code, False)
"""


def fetch(net: Network, url: str, post: bool = False) -> str:
    args = [sys.executable, "-c", FETCH, url] + (["post"] if post else [])
    return net.run("h1", *args).stdout.strip()


def test_a_dashboard_on_a_network_address_needs_its_token(net: Network, tmp_path: Path) -> None:
    ip = net.hosts["ctl"].ip
    url_file, stop_file = tmp_path / "url", tmp_path / "stop"
    argv = [sys.executable, JOB, f"tcp://{ip}:{PORT}", f"{ip}:8787", str(url_file), str(stop_file)]
    net.start("ctl", argv, env=host_env("ctl"))
    try:
        wait_for(url_file.exists, timeout=60, interval=0.05)
        url = url_file.read_text()
        base, sep, token = url.partition("?token=")
        assert base == f"http://{ip}:8787/" and sep and len(token) >= 20
        assert fetch(net, base) == "403 False"
        assert fetch(net, base + "api/status") == "403 False"
        assert fetch(net, base + "metrics?token=wrong") == "403 False"
        assert fetch(net, url) == "200 True"
        assert fetch(net, base + "metrics?token=" + token).startswith("200")
        assert fetch(net, url, post=True) == "405 False"
        assert fetch(net, base + "api/status?token=" + token, post=True) == "405 False"
    finally:
        stop_file.touch()


def test_a_remote_daemons_task_warning_reaches_the_controllers_log(
    net: Network, tmp_path: Path
) -> None:
    log = tmp_path / "controller.log"
    bind = f"tcp://{net.hosts['ctl'].ip}:{PORT}"
    net.start("ctl", [sys.executable, LOG_JOB, bind, str(log)], env=host_env("ctl"))
    start_worker(net, "h1", "far-worker")
    wait_for(lambda: log.exists() and "job done" in log.read_text(), timeout=90, interval=0.1)
    lines = [line for line in log.read_text().splitlines() if "is unsure" in line]
    assert len(lines) == 1, log.read_text()
    name, _, message = lines[0].partition("|")
    assert name == "zmqworkers.remote"
    assert message.startswith("worker far-worker")  # the daemon's worker id
    assert "farjob: task 5 on h1 is unsure" in message
