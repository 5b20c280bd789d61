#!/usr/bin/env bash
# Create .venv and install cds-service with its development extras.
# torch is pinned to the CPU build first; pass TORCH_SPEC to bring another (e.g. a CUDA build on a GPU host).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "cds-service installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
