"""`zmqworkers status FILE`: how a probe judges a daemon's status file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from zmqworkers.worker.daemon import check_status


def write(path: Path, **fields: object) -> Path:
    status = {"pid": 1, "state": "running", "children": [11, 12], "restarts": 0}
    status.update(fields)
    status.setdefault("updated", time.time())
    path.write_text(json.dumps(status))
    return path


@pytest.mark.parametrize(
    ("fields", "ready", "ok", "why"),
    [
        ({}, True, True, "state=running children=2"),
        ({"updated": time.time() - 100}, False, False, "stale"),
        ({"state": "exited"}, False, False, "state=exited"),
        ({"state": "draining"}, False, True, "state=draining"),
        ({"state": "draining"}, True, False, "not ready"),
        ({"children": []}, True, False, "not ready"),
    ],
)
def test_status_judgement(
    tmp_path: Path, fields: dict[str, object], ready: bool, ok: bool, why: str
) -> None:
    path = write(tmp_path / "s.json", **fields)
    healthy, text = check_status(str(path), max_age=30, ready=ready)
    assert healthy is ok and why in text


def test_missing_or_garbled_status_is_unhealthy(tmp_path: Path) -> None:
    assert check_status(str(tmp_path / "none.json"), 30, False)[0] is False
    (tmp_path / "bad.json").write_text("{")
    ok, why = check_status(str(tmp_path / "bad.json"), 30, False)
    assert ok is False and "no readable status" in why
