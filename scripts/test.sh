#!/usr/bin/env bash
# Set up (if needed), lint, format-check, check the import layers and run the test suite.
#   bash scripts/test.sh            everything (what CI runs)
#   bash scripts/test.sh --fast     the unit tier for the inner loop: no test marked slow or gpu
# Other arguments go to pytest, e.g. bash scripts/test.sh --fast tests/rl -k loss
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${KVRL_VENV:-.venv}
args=()
for a in "$@"; do
  if [ "$a" = --fast ]; then args+=(-m "not slow and not gpu"); else args+=("$a"); fi
done
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
start=$(date +%s)
"$VENV/bin/python" -m pytest ${args[@]+"${args[@]}"}
echo "test suite wall time: $(( $(date +%s) - start )) s"
