"""The dashboard: /metrics read by prometheus_client's parser, /api/status, read-only."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for
from zmqworkers import Cluster
from zmqworkers.errors import ConfigurationError


def spin(seconds: float) -> int:
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def fail_some(i: int) -> int:
    if i % 100 == 7:
        raise ValueError(f"task {i} fails on purpose")
    return i


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()  # type: ignore[no-any-return]


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(get(url + "metrics").decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_a_run_and_gauges_return_to_zero() -> None:
    with Cluster(2, dashboard="127.0.0.1:0") as c:
        url = c.dashboard_url
        assert url is not None and url.startswith("http://127.0.0.1:") and "token" not in url
        futures = [c.submit(fail_some, i) for i in range(1000)]
        errors = sum(1 for f in futures if f.exception(timeout=60) is not None)
        assert errors == 10

        def settled() -> Any:
            m = samples(url)
            busy = m[("zmqworkers_workers", (("state", "busy"),))]
            return m if busy == 0 and m[("zmqworkers_tasks_in_flight", ())] == 0 else None

        # Each worker's state comes with its heartbeats: bounded wait for the last one.
        m = wait_for(settled, timeout=10, interval=0.1)
        assert isinstance(m, dict)
        assert m[("zmqworkers_tasks_submitted_total", ())] == 1000
        assert m[("zmqworkers_tasks_done_total", ())] == 990
        assert m[("zmqworkers_tasks_failed_total", ())] == 10
        assert m[("zmqworkers_tasks_queued", ())] == 0
        assert m[("zmqworkers_workers", (("state", "idle"),))] == 2
        assert m[("zmqworkers_task_run_seconds_count", ())] == 1000
        assert m[("zmqworkers_bytes_sent_total", ())] > 0
        assert m[("zmqworkers_bytes_received_total", ())] > 0

        status = json.loads(get(url + "api/status"))
        assert status["done"] == 990 and status["failed"] == 10
        assert {w["id"] for w in status["workers"]} == {w["id"] for w in c.workers()}
        failure = status["failures"][-1]
        assert failure["type"] == "ValueError" and "fails on purpose" in failure["message"]
        assert "fail_some" in failure["traceback"]
        page = get(url).decode()
        assert "dashboard.js" in page and "http" not in page.split("<body>")[1]
        assert b"api/status" in get(url + "dashboard.js")
    # Closed with the cluster.
    with pytest.raises(urllib.error.URLError):
        get(url)


@pytest.mark.parametrize("path", ["", "api/status", "metrics", "nothing"])
def test_no_endpoint_accepts_a_post(path: str) -> None:
    with Cluster(0, dashboard="127.0.0.1:0") as c:
        assert c.dashboard_url is not None
        for method in ("POST", "PUT", "DELETE"):
            req = urllib.request.Request(c.dashboard_url + path, data=b"x", method=method)
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(req, timeout=10)
            info.value.close()
            assert info.value.code == 405
            assert info.value.headers["Allow"] == "GET, HEAD"


def test_a_dashboard_off_loopback_needs_its_token() -> None:
    # 0.0.0.0 is not loopback: a token is made and checked, even from here.
    with Cluster(0, dashboard="0.0.0.0:0") as c:
        url = c.dashboard_url
        assert url is not None and "?token=" in url
        base, token = url.split("?token=")
        local = base.replace("0.0.0.0", "127.0.0.1")
        for path in ("", "api/status", "metrics", "dashboard.js"):
            with pytest.raises(urllib.error.HTTPError) as info:
                get(local + path)
            info.value.close()
            assert info.value.code == 403
            with pytest.raises(urllib.error.HTTPError) as info:
                get(local + path + "?token=" + token[:-1] + "x")
            info.value.close()
            assert info.value.code == 403
        assert b"<html" in get(local + "?token=" + token)
        auth = {"Authorization": f"Bearer {token}"}
        req = urllib.request.Request(local + "metrics", headers=auth)
        with urllib.request.urlopen(req, timeout=10) as r:
            assert b"zmqworkers_tasks_done_total" in r.read()


def _get_with_host(port: int, path: str, host: str | None) -> tuple[int, bytes]:
    """GET ``path`` from 127.0.0.1:``port`` with ``host`` as the Host header (None: none)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_a_loopback_dashboard_answers_only_requests_addressed_to_loopback() -> None:
    # No token on loopback: a page of another site whose name was made to
    # resolve to 127.0.0.1 (DNS rebinding) would send its own name as Host.
    with Cluster(0, dashboard="127.0.0.1:0") as c:
        assert c.dashboard_url is not None and "token" not in c.dashboard_url
        port = int(c.dashboard_url.rsplit(":", 1)[1].strip("/"))
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
            for path in ("/api/status", "/metrics", "/"):
                status, body = _get_with_host(port, path, host)
                assert status == 403, (host, path, status)
                assert b"localhost or a loopback address" in body and host.encode() in body
        # Any port: an SSH tunnel may forward another one to this.
        ok = (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port + 1}", "127.0.0.1")
        for host in ok:
            status, body = _get_with_host(port, "/api/status", host)
            assert status == 200, (host, status, body)
            assert "workers" in json.loads(body)


def test_no_dashboard_unless_asked_for() -> None:
    with Cluster(0) as c:
        assert c.dashboard_url is None


@pytest.mark.parametrize("bad", ["127.0.0.1:99999", "127.0.0.1:http", ":80", 3.5, "host:"])
def test_a_bad_dashboard_address_is_named(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="dashboard must be"):
        Cluster(0, dashboard=bad)


def test_a_taken_dashboard_port_is_named_and_nothing_is_left_running() -> None:
    with Cluster(0, dashboard="127.0.0.1:0") as c:
        assert c.dashboard_url is not None
        port = c.dashboard_url.rsplit(":", 1)[1].strip("/")
        with pytest.raises(ConfigurationError, match=f"cannot listen on 127.0.0.1:{port}"):
            Cluster(0, dashboard=f"127.0.0.1:{port}")


def test_heartbeats_carry_each_workers_rss_and_cpu() -> None:
    with Cluster(1, heartbeat_interval=0.2) as c:
        fut = c.submit(spin, 4.0)

        def busy_row() -> Any:
            rows = c.workers()
            return rows if rows and (rows[0]["cpu"] or 0) > 25 else None

        # A worker spinning in a call uses most of a core (shared here with others).
        rows = wait_for(busy_row, timeout=10, interval=0.05)
        assert isinstance(rows, list)
        real = psutil.Process(rows[0]["pid"]).memory_info().rss
        assert 0.5 * real < rows[0]["rss"] < 2 * real
        assert c.status()["workers"][0]["rss"] == rows[0]["rss"]
        fut.result(timeout=30)
