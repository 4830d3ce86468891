#!/usr/bin/env bash
# Creates .venv-pydidas/: a virtual environment with pydidas and zmqworkers
# (editable, with the test tools) for the tests in tests/interop. pydidas pins
# its own dependencies exactly, so they live apart from the main environment.
# Quick when the environment is already there; prints the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."

PYDIDAS_VERSION=26.5.19
VENV=.venv-pydidas
STAMP="$VENV/.installed"
# The stamp records what was installed, so a changed pin or pyproject.toml
# triggers a reinstall while an unchanged one costs only a file read.
WANT="pydidas==$PYDIDAS_VERSION $(sha256sum pyproject.toml | cut -d' ' -f1)"

# Another venv's python on PATH must not leak into this one: take the base
# interpreter that created the active environment, if any.
BASE_PYTHON=${PYDIDAS_VENV_PYTHON:-}
if [ -z "$BASE_PYTHON" ]; then
    BASE_PYTHON=$(python3 -c 'import sys, os; print(os.path.join(sys.base_exec_prefix, "bin", "python3"))')
fi

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    echo "$VENV/bin/python"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$BASE_PYTHON" -m venv "$VENV" >&2
fi
PIP=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)
"${PIP[@]}" install "pydidas==$PYDIDAS_VERSION" >&2
# zmqworkers without its [qt] extra: pydidas brings PySide6 and qtpy, and a
# second Qt binding in one environment would only confuse qtpy.
"${PIP[@]}" install -e . "pytest>=8" "pytest-timeout>=2.2" "pytest-qt>=4.4" "psutil>=5.9" >&2
# pydidas builds its HTML manual on its first import (about a minute); do it
# here once, so no test and no worker process pays for it under a timeout.
QT_QPA_PLATFORM=offscreen "$VENV/bin/python" -c "import pydidas" >/dev/null
echo "$WANT" >"$STAMP"
echo "$VENV/bin/python"
