#!/usr/bin/env bash
# Writes the lock files from the environments that the suite just passed in:
#   constraints.txt       <- .venv      (scripts/setup.sh installs under it)
#   constraints-lmms.txt  <- .venv-lmms (scripts/setup_lmms.sh installs under it), when present
# Run it after `.venv/bin/python -m pytest` passed on new releases; tests/test_install.py
# checks that the lock still satisfies pyproject.toml's ranges.
set -euo pipefail
cd "$(dirname "$0")/.."
lock() {  # lock ENV OUT
    {
        echo "# Versions the test suite passed with ($(date -u +%Y-%m-%d), $("$1/bin/python" -V)); written by scripts/lock.sh."
        echo "# Used as pip constraints by scripts/setup*.sh; DYNVLM_NEWEST=1 ignores it."
        # dynvlm itself is installed from the checkout; a local build label (+cpu, +cu128) is not pinned,
        # so the same lock serves a CUDA torch of the same release
        "$1/bin/python" -m pip freeze --exclude-editable | grep -v '^dynvlm' | sed -E 's/\+[A-Za-z0-9.]+$//' | LC_ALL=C sort -f
    } > "$2"
    echo "wrote $2 ($(grep -vc '^#' "$2") packages)"
}
lock .venv constraints.txt
if [ -x .venv-lmms/bin/python ]; then
    lock .venv-lmms constraints-lmms.txt
fi
