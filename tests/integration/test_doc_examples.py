"""Every Python example in the README and docs/ runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def examples() -> list[tuple[str, int, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for m in re.finditer(r"```python\n(.*?)```", text, re.S):
            line = text.count("\n", 0, m.start()) + 1
            found.append((doc.name, line, m.group(1)))
    return found


def test_there_are_examples() -> None:
    assert len(examples()) >= 3


@pytest.mark.parametrize(
    ("doc", "line", "code"), examples(), ids=[f"{d}:{n}" for d, n, _ in examples()]
)
def test_example_runs(tmp_path: Path, doc: str, line: int, code: str) -> None:
    script = tmp_path / "example.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=str(ROOT), QT_QPA_PLATFORM="offscreen")
    env.pop("ZMQWORKERS_KEY", None)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, f"{doc}:{line} failed:\n{proc.stdout}\n{proc.stderr}"
