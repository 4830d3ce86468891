"""Ask a live controller for its workers: ``zmqworkers info ADDRESS``.

One signed INFO request on the task channel, one INFO answer; the client
holds the key like any worker, so nobody else can list the workers.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import zmq

from zmqworkers.errors import DecodeError
from zmqworkers.protocol import Kind, decode, encode

COLUMNS = (
    ("ID", "id"),
    ("HOST", "host"),
    ("PID", "pid"),
    ("STATE", "state"),
    ("DONE", "tasks_done"),
    ("HELD", "in_flight"),
    ("RSS", "rss"),
    ("CPU", "cpu"),
)


def format_usage(key: str, value: Any) -> str:
    """A worker's RSS (bytes) or CPU (percent) as a table shows it; "-" when not said."""
    if value is None or value == "":
        return "-" if key in ("rss", "cpu") else ""
    if key == "cpu":
        return f"{float(value):.0f}%"
    if key == "rss":
        size = float(value)
        for unit in ("B", "KiB", "MiB", "GiB"):
            if size < 1024 or unit == "GiB":
                return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
            size /= 1024
    return str(value)


def query_info(address: str, key: bytes, timeout: float = 5.0) -> dict[str, Any]:
    """The controller's answer: its id, version and a list of worker rows."""
    if not (isinstance(timeout, int | float) and 0 < timeout < math.inf):
        # zmq reads a negative poll timeout as "wait for ever".
        raise ValueError(f"timeout must be a finite number of seconds > 0, not {timeout!r}")
    sender = f"info-{uuid.uuid4().hex[:12]}"
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, sender.encode())
        sock.setsockopt(zmq.MAXMSGSIZE, 16 * 1024 * 1024)
        sock.connect(address)
        sock.send_multipart(encode(Kind.INFO, sender, 1, key, {"id": sender}))
        if not sock.poll(int(timeout * 1000)):
            raise TimeoutError(
                f"no answer from {address} within {timeout:.1f} s "
                "(wrong address, wrong key, or no controller there)"
            )
        try:
            msg = decode(sock.recv_multipart(), key)
        except DecodeError as exc:
            raise TimeoutError(f"unreadable answer from {address}: {exc}") from exc
        if msg.kind == Kind.REFUSED:
            raise TimeoutError(f"{address} refused: {msg.header}")
        if msg.kind != Kind.INFO or not isinstance(msg.header, dict):
            raise TimeoutError(f"unexpected {msg.kind.name} answer from {address}")
        return msg.header
    finally:
        sock.close(linger=0)
        ctx.term()


def format_table(answer: dict[str, Any]) -> str:
    """The workers as a plain-text table, one line each, under a title line."""
    workers = list(answer.get("workers", []))
    rows = [[h for h, _ in COLUMNS]]
    for w in sorted(workers, key=lambda w: (str(w.get("host")), str(w.get("id")))):
        rows.append([format_usage(k, w.get(k, "")) for _, k in COLUMNS])
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = [
        f"controller {answer.get('controller', '?')} on {answer.get('host', '?')} "
        f"(zmqworkers {answer.get('version', '?')}, protocol {answer.get('protocol', '?')}): "
        f"{len(workers)} worker(s), {answer.get('queued', 0)} task(s) queued"
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
