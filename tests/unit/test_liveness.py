"""Heartbeat bookkeeping with an injected clock: no sleeps."""

from __future__ import annotations

import pytest

from zmqworkers.protocol.liveness import Heartbeat, describe_silence


def test_peer_is_lost_only_after_interval_times_misses() -> None:
    hb = Heartbeat(interval=1.0, misses=3)
    hb.seen("a", 0.0)
    hb.seen("b", 0.0)
    assert hb.expired(3.0) == []  # exactly at the limit: not yet
    hb.seen("b", 2.5)
    assert hb.expired(3.01) == [("a", pytest.approx(3.01))]
    assert [p for p, _ in hb.expired(6.0)] == ["a", "b"]  # oldest first


def test_expired_peers_are_reported_until_forgotten() -> None:
    hb = Heartbeat(interval=0.5, misses=2)
    hb.seen("a", 0.0)
    assert [p for p, _ in hb.expired(2.0)] == ["a"]
    assert [p for p, _ in hb.expired(2.1)] == ["a"]
    hb.forget("a")
    assert hb.expired(10.0) == []
    assert hb.silent_for("a", 10.0) == 0.0


def test_a_message_read_late_does_not_turn_the_clock_back() -> None:
    hb = Heartbeat(interval=1.0, misses=3)
    hb.seen("a", 5.0)
    hb.seen("a", 4.0)
    assert hb.silent_for("a", 6.0) == 1.0


def test_a_long_task_keeps_its_worker_alive_through_its_heartbeats() -> None:
    # The worker's heartbeat thread beats every interval while one call runs
    # for an hour: never expired.
    hb = Heartbeat(interval=1.0, misses=3)
    for t in range(3600):
        hb.seen("busy", float(t))
        assert hb.expired(t + 0.99) == []


@pytest.mark.parametrize(("interval", "misses"), [(0.0, 3), (-1.0, 3), (1.0, 0)])
def test_bad_settings_are_refused_by_name(interval: float, misses: int) -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        Heartbeat(interval=interval, misses=misses)


def test_silence_is_described_with_its_likely_causes() -> None:
    text = describe_silence(3.2, 1.0)
    assert "3.2 s" in text and "3 missed" in text and "link cut" in text
