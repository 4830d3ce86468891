"""Faults across hosts: a controller and two worker hosts in network namespaces.

Each test builds its own hosts (see ``netns.py``), runs a real job on them,
breaks something mid-run, and checks the job's own log: every task
delivered exactly once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.multihost.conftest import KEY, PORT, host_env, start_worker
from tests.multihost.netns import Network

pytestmark = [pytest.mark.multihost, pytest.mark.slow]

JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "job.py")


def events(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written right now
    return out


def results(log: Path) -> list[dict[str, Any]]:
    return [e for e in events(log) if e["event"] == "result"]


def start_job(net: Network, log: Path, n_tasks: int, seconds: float, n_workers: int) -> None:
    bind = f"tcp://{net.hosts['ctl'].ip}:{PORT}"
    argv = [sys.executable, JOB, bind, KEY, str(n_tasks), str(seconds), str(n_workers), str(log)]
    net.start("ctl", argv, env=host_env("ctl"))


def finish(log: Path, n_tasks: int, timeout: float = 60) -> dict[str, Any]:
    end = wait_for(lambda: [e for e in events(log) if e["event"] == "end"], timeout)
    assert isinstance(end, list)
    summary = end[0]
    deliveries = {int(k): v for k, v in summary["deliveries"].items()}
    assert len(deliveries) == n_tasks, f"{n_tasks - len(deliveries)} task(s) never delivered"
    assert set(deliveries.values()) == {1}, "a task was delivered more than once"
    assert summary["errors"] == 0
    return summary  # type: ignore[no-any-return]


def test_all_processes_on_one_worker_host_killed_mid_run(net: Network, tmp_path: Path) -> None:
    log = tmp_path / "job.jsonl"
    start_job(net, log, n_tasks=60, seconds=0.1, n_workers=4)
    for host in ("h1", "h2"):
        for i in range(2):
            start_worker(net, host, f"{host}-w{i}")
    wait_for(lambda: len(results(log)) >= 10, 60)
    t_kill = time.monotonic()
    killed = net.kill_host("h1")
    assert len(killed) == 2
    finish(log, 60)
    lost = [e for e in events(log) if e["event"] == "worker_lost"]
    assert sorted(e["data"]["id"] for e in lost) == ["h1-w0", "h1-w1"]
    # Seen by the connection watch, long before 3 missed heartbeats (1.5 s).
    assert all(e["t"] - t_kill < 1.5 for e in lost), [e["t"] - t_kill for e in lost]
    late = [r for r in results(log) if r["t"] > t_kill + 0.5]
    assert late and all(r["host"] == "h2" for r in late)


def test_cut_link_heals_and_the_host_rejoins_and_takes_work(net: Network, tmp_path: Path) -> None:
    log = tmp_path / "job.jsonl"
    start_job(net, log, n_tasks=60, seconds=0.2, n_workers=2)
    start_worker(net, "h1", "h1-w")
    start_worker(net, "h2", "h2-w")
    wait_for(lambda: len(results(log)) >= 5, 60)
    net.cut("h1")
    t_cut = time.monotonic()
    lost = wait_for(lambda: [e for e in events(log) if e["event"] == "worker_lost"], 10)
    assert isinstance(lost, list) and lost[0]["data"]["id"] == "h1-w"
    assert "no heartbeat" in lost[0]["data"]["how"]
    time.sleep(max(0.0, t_cut + 5.0 - time.monotonic()))  # the cut lasts 5 s
    net.restore("h1")
    t_restore = time.monotonic()
    finish(log, 60)
    rejoined = [
        e
        for e in events(log)
        if e["event"] == "worker_joined" and e["data"]["id"] == "h1-w" and e["t"] > t_restore
    ]
    assert rejoined, "the cut host never rejoined"
    after = [r for r in results(log) if r["host"] == "h1" and r["t"] > t_restore]
    assert after, "the cut host took no work after the link came back"


def test_five_percent_packet_loss_on_a_worker_host(net: Network, tmp_path: Path) -> None:
    import shutil

    if shutil.which("nft") is None:
        pytest.skip("packet loss needs `nft` (apt-get install nftables)")
    net.add_loss("h1", 5)
    log = tmp_path / "job.jsonl"
    start_job(net, log, n_tasks=40, seconds=0.05, n_workers=2)
    start_worker(net, "h1", "h1-w")
    start_worker(net, "h2", "h2-w")
    finish(log, 40)
    assert any(r["host"] == "h1" for r in results(log)), "the lossy host did no work"
    assert net.dropped_packets("h1") > 0, "no packet was dropped: the fault was not real"
