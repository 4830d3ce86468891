"""pydidas's public-API expectations of both classes, on PySide6 beside real pydidas.

The same tests as tests/qt/test_pydidas_protocol.py (PyQt5 in the main suite).
"""

from __future__ import annotations

import qtpy

from tests.qt.test_pydidas_protocol import *  # noqa: F403


def test_this_suite_runs_on_pyside6() -> None:
    assert qtpy.API_NAME == "PySide6"
