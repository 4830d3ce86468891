"""Large buffers skip hashing only where both ends vouch for the link.

Loopback, ipc and CURVE links rule out changes in transit, so arrays there
are signed by length only (docs/security.md); anywhere else, or with
``sign_buffers=True``, every byte is hashed. Either way the arrays arrive
intact and the envelope and pickle stream are signed in full.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import zmq

from tests.security.helpers import keygen, start_daemon, stop_process
from zmqworkers import Cluster

KEY = "b" * 64


def checksum(a: np.ndarray) -> tuple[float, np.ndarray]:
    return float(a.sum()), a


def round_trip(cluster: Cluster) -> list[bool]:
    arrays = [np.random.default_rng(i).random(1 << 18) for i in range(4)]  # 2 MiB each
    for a, (total, back) in zip(arrays, cluster.map(checksum, arrays, timeout=60)):
        assert total == float(a.sum())
        assert np.array_equal(back, a)
    return [w["buffers_signed"] for w in cluster.workers()]


def test_local_workers_over_ipc_sign_buffers_by_length() -> None:
    with Cluster(2) as cluster:
        cluster.wait_for_workers(2, timeout=30)
        assert round_trip(cluster) == [False, False]


def test_sign_buffers_true_hashes_them_on_loopback_too() -> None:
    with Cluster(1, sign_buffers=True) as cluster:
        cluster.wait_for_workers(1, timeout=30)
        assert round_trip(cluster) == [True]


def test_a_daemon_on_loopback_tcp_signs_buffers_by_length() -> None:
    with Cluster(0, key=KEY) as cluster:
        proc = start_daemon(cluster.address, env={"ZMQWORKERS_KEY": KEY})
        try:
            cluster.wait_for_workers(1, timeout=30)
            assert round_trip(cluster) == [False]
        finally:
            stop_process(proc)


def test_a_controller_on_every_interface_hashes_buffers_but_for_its_ipc_workers() -> None:
    # The daemon dials loopback and vouches for its side, but the controller
    # also listens where the network reaches: it does not agree. Its own
    # local worker dialled the private ipc folder, which no network reaches.
    with Cluster(1, bind="tcp://0.0.0.0:0", key=KEY) as cluster:
        port = urlsplit(cluster.address).port
        proc = start_daemon(f"tcp://127.0.0.1:{port}", env={"ZMQWORKERS_KEY": KEY})
        try:
            cluster.wait_for_workers(2, timeout=30)
            round_trip(cluster)
            signed = {w["local"]: w["buffers_signed"] for w in cluster.workers()}
            assert signed == {True: False, False: True}
        finally:
            stop_process(proc)


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")
def test_curve_links_sign_buffers_by_length_on_any_interface(tmp_path: Path) -> None:
    keygen(tmp_path)
    with Cluster(0, bind="tcp://0.0.0.0:0", curve_dir=tmp_path) as cluster:
        port = urlsplit(cluster.address).port
        proc = start_daemon(f"tcp://127.0.0.1:{port}", "--curve", str(tmp_path))
        try:
            cluster.wait_for_workers(1, timeout=30)
            assert round_trip(cluster) == [False]
        finally:
            stop_process(proc)
