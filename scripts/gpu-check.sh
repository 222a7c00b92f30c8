#!/usr/bin/env bash
# The GPU check for a lent H100/H200 (kvrl/gpu_check.py): a full-width Kimi-VL-A3B slice, forward +
# backward on 16K packed tokens, MFU, peak memory against kvrl plan, kernels, routing replay, Muon +
# QK-clip; then the `gpu` tests that need no DeepSpeed, Ray or vLLM, where pytest is installed.
#   bash scripts/gpu-check.sh [--out FILE] [--tokens N]   on the device (torch + transformers only)
#   bash scripts/gpu-check.sh --dry-run                   here, on CPU at the tiny width (a test runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
PYTHONPATH=. "$PY" -m kvrl.gpu_check "$@"
case " $* " in *" --dry-run "*) exit 0 ;; esac
if "$PY" -c "import pytest" 2>/dev/null; then
  PYTHONPATH=. "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/kimivl/test_cuda.py
fi
