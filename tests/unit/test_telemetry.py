"""Pure parts of monitoring: telemetry, the records it reads, the log forwarder's bound."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from zmqworkers.controller.telemetry import MAX_FAILURES, RUN_TIME_BUCKETS, Telemetry
from zmqworkers.dashboard.metrics import render_metrics
from zmqworkers.errors import DecodeError, make_remote_error
from zmqworkers.protocol.records import ForwardedLog, Status
from zmqworkers.worker.logforward import LogForwarder


def test_telemetry_counts_keeps_the_latest_failures_and_a_histogram() -> None:
    t = Telemetry()
    err = make_remote_error("ValueError", "bad", "Traceback: here", "w1", "h1")
    t.delivered([(i, i % 2 == 0, err if i % 2 else i) for i in range(100)], now=10.0)
    assert (t.done, t.failed) == (50, 50)
    snap = t.snapshot(now=12.0)
    assert len(snap["failures"]) == MAX_FAILURES
    assert snap["failures"][-1] == {
        "task": 99, "type": "ValueError", "message": "bad", "worker": "w1", "host": "h1",
        "traceback": "Traceback: here", "ago": 2.0,
    }  # fmt: skip
    t.ran({"busy": 0.5, "n": 10})  # 50 ms each
    t.ran({"busy": "x", "n": 10})  # not a measurement: ignored
    t.ran({"busy": 2.0, "n": 0})
    rt = t.snapshot(now=12.0)["run_time"]
    assert rt["count"] == 10 and rt["sum"] == 0.5
    below_50ms = RUN_TIME_BUCKETS.index(0.01)
    assert rt["cumulative"][below_50ms] == 0 and rt["cumulative"][below_50ms + 1] == 10
    assert rt["buckets"][-1] == "+Inf"


def test_throughput_takes_one_sample_a_second_at_most() -> None:
    t = Telemetry()
    for i in range(30):
        t.delivered([(i, True, i)], now=i * 0.1)
    assert [round(x) for x, _ in t.snapshot(now=3.0)["throughput"]] == [-3, -2, -1]


def test_metrics_text_of_an_empty_status_is_valid() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    text = render_metrics({"workers": [], "dropped": {"signature": 3}}).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"zmqworkers_tasks_done", "zmqworkers_messages_dropped", "zmqworkers_workers"} <= names
    assert 'zmqworkers_messages_dropped_total{reason="signature"} 3.0' in text


def test_status_carries_rss_and_cpu_only_when_well_formed() -> None:
    s = Status.parse({"state": "busy", "task": 3, "rss": 1 << 20, "cpu": 97.5}, "w")
    assert (s.rss, s.cpu) == (1 << 20, 97.5)
    assert Status.parse(s.header(), "w") == s
    bad = Status.parse({"state": "busy", "task": 3, "rss": -1, "cpu": True}, "w")
    assert (bad.rss, bad.cpu) == (None, None)


@pytest.mark.parametrize(
    "log",
    [None, [], {"level": "30", "created": 1.0}, {"level": 30, "created": "now"}],
)
def test_a_malformed_forwarded_record_is_refused(log: Any) -> None:
    with pytest.raises(DecodeError, match="log record from w"):
        ForwardedLog.parse(log, "w")


def test_the_forwarder_sends_a_burst_then_its_rate_and_counts_the_rest() -> None:
    sent: list[dict[str, Any]] = []
    now = [0.0]

    def send(text: str, log: dict[str, Any]) -> bool:
        sent.append(log)
        return True

    handler = LogForwarder(logging.WARNING, send, rate=10, burst=5, clock=lambda: now[0])
    logger = logging.getLogger("tests.unit.forwarded")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        own = {"name": "zmqworkers.worker.loop", "levelno": logging.WARNING, "msg": "stays"}
        handler.handle(logging.makeLogRecord(own))  # the library's own records stay local
        assert not sent and handler.dropped == 0
        for i in range(100):
            logger.warning("line %d", i)
        logger.info("below the level")
        assert [r["message"] for r in sent] == [f"line {i}" for i in range(5)]
        assert handler.dropped == 95
        now[0] = 0.5  # five tokens back
        for i in range(10):
            logger.warning("later %d", i)
        assert len(sent) == 10 and sent[5]["dropped"] == 95 and sent[6]["dropped"] == 0
        assert handler.dropped == 5
        handler.flush_drops()
        assert sent[-1]["level"] == 0 and sent[-1]["dropped"] == 5 and handler.dropped == 0
    finally:
        logger.removeHandler(handler)
