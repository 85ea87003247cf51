#!/usr/bin/env bash
# Creates .venv (idempotent) and installs dynvlm into it, torch first, at the versions in
# constraints.txt: the set the test suite passed with (scripts/lock.sh writes it).
#
#   bash scripts/setup.sh                                      # the tested versions
#   DYNVLM_NEWEST=1 DYNVLM_VENV=.venv-newest bash scripts/setup.sh   # the newest releases instead
#
# torch comes from the lock (the CPU build this project's machines carry); a looser pin would
# pull a multi-GB CUDA build. On a GPU machine, install your CUDA torch into .venv first: this
# script keeps any torch that is already there (and then leaves torch, Triton and NVIDIA's
# libraries out of the constraints, since they pair with that torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
ENV=${DYNVLM_VENV:-.venv}
NEWEST=${DYNVLM_NEWEST:-0}
LOCK=constraints.txt
if [ ! -x "$ENV/bin/python" ]; then
    "$PY" -m venv "$ENV"
fi
VPY=$ENV/bin/python
stamp=$ENV/.dynvlm-installed
hash=$(cat pyproject.toml setup.py "$LOCK" scripts/setup.sh | sha256sum | cut -c1-12)-newest$NEWEST
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
    exit 0
fi
locked_torch=$(sed -n 's/^torch==//p' "$LOCK")
"$VPY" -m pip install -q --upgrade pip
if ! "$VPY" -c "import torch" 2>/dev/null; then
    "$VPY" -m pip install -q "torch==${DYNVLM_TORCH_VERSION:-$locked_torch}"
fi
have=$("$VPY" -c "import torch; print(torch.__version__.split('+')[0])")
if [ "$NEWEST" = 1 ]; then
    # everything at its newest release but torch, which stays the build installed above (upgrading
    # it from the index would pull a multi-GB CUDA build)
    keep=$(mktemp)
    trap 'rm -f "$keep"' EXIT
    echo "torch==$have" > "$keep"
    "$VPY" -m pip install -q --upgrade --upgrade-strategy eager -c "$keep" -e ".[dev]"
else
    constraints=$(mktemp)
    trap 'rm -f "$constraints"' EXIT
    if [ "$have" = "$locked_torch" ]; then
        cp "$LOCK" "$constraints"
    else
        echo "keeping torch $have (the lock has $locked_torch): torch, triton and nvidia-* are not pinned"
        grep -viE '^(torch|triton|nvidia-[a-z0-9-]+)==' "$LOCK" > "$constraints"
    fi
    "$VPY" -m pip install -q -c "$constraints" -e ".[dev]"
fi
echo "$hash" > "$stamp"
