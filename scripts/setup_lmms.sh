#!/usr/bin/env bash
# Creates .venv-lmms (idempotent): lmms-eval 0.7.3 + dynvlm, keeping the torch you already have,
# with every other package at the version in constraints-lmms.txt (the set the suite passed with,
# written by scripts/lock.sh; DYNVLM_NEWEST=1 installs the newest releases instead).
#
#   bash scripts/setup_lmms.sh          # then: .venv-lmms/bin/lmms-eval --model dynvlm ...
#
# A plain `pip install lmms-eval==0.7.3` replaces a CPU torch with a multi-GB CUDA build
# (its torchvision wants a newer torch). So: torch is installed first, at exactly the version
# of .venv's torch (or $DYNVLM_TORCH_VERSION, default 2.13.0), then everything else under a
# constraints file pinning that torch and the matching torchvision. A torchvision that cannot
# load its operators on this torch (PyPI's torchvision on a CPU torch: "operator
# torchvision::nms does not exist") is removed again: transformers only uses it when it loads.
# lmms-eval 0.7.3 imports filelock._api, which filelock 4 dropped: filelock<4. On a CPU torch
# Triton (1 GB, GPU-only kernels) is left out. Wheels are not byte-compiled (--no-compile): faster.
# On a GPU machine, put your CUDA torch into .venv-lmms first (or into .venv before running
# this): an importable torch is kept. The env lives apart from .venv so that stays small.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
ENV=${DYNVLM_LMMS_ENV:-.venv-lmms}
# one installer at a time per checkout (test runs may start this concurrently)
if command -v flock >/dev/null; then
    exec 9>"${TMPDIR:-/tmp}/dynvlm-setup-lmms-$(pwd | sha256sum | cut -c1-12).lock"
    flock 9
fi
if [ ! -x "$ENV/bin/python" ]; then
    "$PY" -m venv "$ENV"
fi
VPY=$ENV/bin/python
NEWEST=${DYNVLM_NEWEST:-0}
LOCK=constraints-lmms.txt
stamp=$ENV/.dynvlm-lmms-installed
hash=$(cat pyproject.toml setup.py scripts/setup_lmms.sh $(ls "$LOCK" 2>/dev/null) | sha256sum | cut -c1-12)-newest$NEWEST
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
    exit 0
fi
if ! "$VPY" -c "import torch" 2>/dev/null; then
    version=${DYNVLM_TORCH_VERSION:-}
    if [ -z "$version" ] && [ -x .venv/bin/python ]; then
        version=$(.venv/bin/python -c "import torch; print(torch.__version__)" 2>/dev/null || true)
    fi
    "$VPY" -m pip install -q --no-compile "torch==${version:-2.13.0}"
fi
torch_version=$("$VPY" -c "import torch; print(torch.__version__.split('+')[0])")
# torchvision pairs with torch: 2.X.Y -> 0.(X+15).Y
vision_version=$("$VPY" -c "v = '$torch_version'.split('.'); print(f'0.{int(v[1]) + 15}.{v[2]}')")
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
printf 'torch==%s\ntorchvision==%s\nfilelock<4\n' "$torch_version" "$vision_version" > "$constraints"
if [ "$NEWEST" != 1 ] && [ -f "$LOCK" ]; then
    # torch and its companions pair with the torch kept above, so the lock does not pin them
    grep -viE '^(torch|torchvision|triton|nvidia-[a-z0-9-]+)==' "$LOCK" >> "$constraints"
fi
# dynvlm's dependencies, less Triton on a CPU torch (its kernels are optional: the torch path runs
# without them), then dynvlm itself (editable, no dependencies) in a second step.
deps=$("$VPY" - <<'PY'
import tomllib, torch
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = project["dependencies"] + project["optional-dependencies"]["lmms"]
cpu = torch.version.cuda is None and not torch.version.hip
print("\n".join(d for d in deps if not (cpu and d.startswith("triton"))))
PY
)
mapfile -t deps <<< "$deps"
"$VPY" -m pip install -q --no-compile -c "$constraints" "${deps[@]}" pytest
"$VPY" -m pip install -q --no-compile --no-deps -e .
if "$VPY" -m pip show -q torchvision 2>/dev/null && ! "$VPY" -c "import torchvision" 2>/dev/null; then
    "$VPY" -m pip uninstall -y -q torchvision
fi
"$VPY" -c "import lmms_eval, dynvlm, torch; print('lmms-eval env ready: torch', torch.__version__)"
echo "$hash" > "$stamp"
