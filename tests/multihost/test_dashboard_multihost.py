"""The dashboard bound to a host's network address: its token, asked of another host."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.multihost.conftest import PORT, host_env
from tests.multihost.netns import Network

pytestmark = [pytest.mark.multihost, pytest.mark.slow]

JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard_job.py")
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
