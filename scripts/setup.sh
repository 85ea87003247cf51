#!/usr/bin/env bash
# Creates .venv (idempotent) and installs dynvlm into it, torch first.
# torch==2.13.0 is the CPU build this project's machines carry; a looser pin would pull a
# multi-GB CUDA build. On a GPU machine, install your CUDA torch into .venv first: this
# script keeps any torch that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.dynvlm-installed
hash=$(cat pyproject.toml setup.py | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
    exit 0
fi
"$VPY" -m pip install -q --upgrade pip
if ! "$VPY" -c "import torch" 2>/dev/null; then
    "$VPY" -m pip install -q "torch==${DYNVLM_TORCH_VERSION:-2.13.0}"
fi
"$VPY" -m pip install -q -e ".[dev]"
echo "$hash" > "$stamp"
