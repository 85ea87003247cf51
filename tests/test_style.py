"""Style: the tree is ruff clean (rules in pyproject.toml) and its code names no file outside the repository."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_code_names_no_file_outside_the_repository():
    # design notes outside the checkout (a DESIGN.md, ../shared/...) are not there for a user
    pattern = re.compile(r"DESIGN\.md|\.\./shared|SYNTHETIC-NOTES|KERNEL-NOTES")
    offenders = []
    for folder in ("core", "plugins", "kernels", "experiments", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == Path(__file__).resolve():
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
