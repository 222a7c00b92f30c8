#!/usr/bin/env bash
# Set up (if needed), lint, format-check and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${KVRL_VENV:-.venv}
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
start=$(date +%s)
"$VENV/bin/python" -m pytest "$@"
echo "test suite wall time: $(( $(date +%s) - start )) s"
