#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then runs
# lint, format check, type check and every test. tests/interop runs a second
# time in its own environment with real pydidas (scripts/pydidas-venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e ".[qt,test]"
if [ "$(id -u)" = 0 ] && [ -x scripts/install-system-deps.sh ]; then
    scripts/install-system-deps.sh
fi
PYDIDAS_PYTHON=$(bash scripts/pydidas-venv.sh)

python3 -m ruff check zmqworkers tests benchmarks
python3 -m ruff format --check zmqworkers tests benchmarks
python3 -m mypy
export QT_QPA_PLATFORM=offscreen

# Both runs always happen; the script fails if either failed.
main_rc=0
python3 -m pytest -p no:cacheprovider --ignore=tests/interop "$@" || main_rc=$?
interop_rc=0
# pydidas runs on the PySide6 it installs; that environment holds PyQt5 as
# well, which qtpy and pytest-qt would otherwise pick first.
QT_API=pyside6 PYTEST_QT_API=pyside6 "$PYDIDAS_PYTHON" -m pytest -p no:cacheprovider tests/interop \
    || interop_rc=$?
if [ "$main_rc" != 0 ] || [ "$interop_rc" != 0 ]; then
    echo "test.sh: main suite exit $main_rc, pydidas interop suite exit $interop_rc" >&2
    exit $(( main_rc != 0 ? main_rc : interop_rc ))
fi
