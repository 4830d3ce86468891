"""A stop that reaches the engine while its local workers are still starting.

The stop goes to the workers that have joined; a local process that joins
after it (a loaded machine, a slow import) must still be told to leave, or it
serves an engine that was told to have no workers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for, worker_processes
from zmqworkers.controller.engine import Engine
from zmqworkers.controller.options import build_options

SLOW_START = """\
import os, time
if os.environ.get("ZW_TEST_SLOW_START"):
    time.sleep(float(os.environ["ZW_TEST_SLOW_START"]))
"""


class _Events:
    def __init__(self) -> None:
        self.joined: list[str] = []

    def on_results(self, results: list[tuple[int, bool, Any]]) -> None:
        pass

    def on_event(self, name: str, data: Any) -> None:
        if name == "worker_joined":
            self.joined.append(data["id"])


def test_workers_that_join_after_a_stop_leave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sitecustomize runs at interpreter start: each local worker takes 1.5 s
    # to get as far as its hello, long after the stop below.
    (tmp_path / "sitecustomize.py").write_text(SLOW_START)
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + (os.pathsep + path if path else ""))
    monkeypatch.setenv("ZW_TEST_SLOW_START", "1.5")
    events = _Events()
    engine = Engine(build_options(n_workers=2), events)
    try:
        engine.start()
        assert events.joined == []  # still starting
        engine.stop_workers()
        # Both join, are told to leave, and their processes end.
        wait_for(lambda: len(events.joined) == 2, timeout=30)
        wait_for(lambda: worker_processes() == [], timeout=30)
        assert engine.workers() == []
    finally:
        engine.shutdown()
