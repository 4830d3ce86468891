#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then runs
# lint, format check, type check and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e ".[qt,test]"
if [ "$(id -u)" = 0 ] && [ -x scripts/install-system-deps.sh ]; then
    scripts/install-system-deps.sh
fi

python3 -m ruff check zmqworkers tests benchmarks
python3 -m ruff format --check zmqworkers tests benchmarks
python3 -m mypy
export QT_QPA_PLATFORM=offscreen
python3 -m pytest -p no:cacheprovider "$@"
