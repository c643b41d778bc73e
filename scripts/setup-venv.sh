#!/usr/bin/env bash
# Creates .venv (once) with torch, attnbench and its test and xformers extras.
# Without an NVIDIA driver it installs the CPU build of torch (an unpinned torch pulls several GB of CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ATTNBENCH_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$PY" -m pip install -q torch
  else
    "$PY" -m pip install -q torch==2.13.0
  fi
fi
"$PY" -m pip install -q -e ".[test,xformers]"
