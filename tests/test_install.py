"""A fresh machine: the documented commands work from any folder, and the lock matches the pyproject.

transformers (>= 5.25) imports Hugging Face's ``kernels`` distribution when a model class loads.
The checkout's top-level ``kernels/`` folder is ``dynvlm.kernels``; when the checkout root comes
first on ``sys.path`` (``python -m`` or ``python -c`` run from it), ``kernels/__init__.py`` hands
the name to the installed distribution. These tests run the real commands in subprocesses from
the root and from each of dynvlm's folders.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from tiny_vlm import save_clip

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ["", "core", "plugins", "kernels"]  # "" = the repository root

BUILD_CLIP = """
import sys, kernels, torch, dynvlm
enc = dynvlm.build_component("encoder", {"name": "clip", "path": sys.argv[1]})
out = enc(enc.preprocess(torch.zeros(2, 24, 24, 3, dtype=torch.uint8)))
print("KERNELS", kernels.__file__)
print("SHAPE", tuple(out.shape))
"""


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def test_hugging_face_kernels_is_installed():
    # the clash only exists where the distribution is there: the tests below would prove nothing without it
    assert importlib.metadata.version("kernels")


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: f or "root")
def test_python_m_dynvlm_plugins_runs_from_the_folder(folder):
    proc = _run([sys.executable, "-m", "dynvlm", "plugins"], ROOT / folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"\bclip\b", proc.stdout) and re.search(r"\bpool\b", proc.stdout)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: f or "root")
def test_a_clip_encoder_builds_from_the_folder(folder, tmp_path):
    path = save_clip(tmp_path / "clip")
    proc = _run([sys.executable, "-c", BUILD_CLIP, path], ROOT / folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("KERNELS ", "SHAPE ")))
    kernels_file, shape = found["KERNELS"], found["SHAPE"]
    # the installed distribution answered, never the checkout's folder
    assert Path(kernels_file).resolve() != (ROOT / "kernels" / "__init__.py").resolve()
    assert shape == "(2, 16, 32)"


def test_without_the_distribution_top_level_kernels_is_a_missing_module():
    # -S: no site-packages, so Hugging Face's package is absent; the checkout root is first on sys.path
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "try:\n    import kernels\nexcept ModuleNotFoundError as e:\n"
        "    print(e.name, 'kernels' in sys.modules, e)\nelse:\n    print('imported', kernels.__file__)\n"
    )
    proc = _run([sys.executable, "-S", "-c", code, str(ROOT)], ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("kernels False ") and "dynvlm.kernels" in proc.stdout


# ------------------------------------------------------------------------------------------
# the lock files


def _lock(name: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / name).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip())
        assert m, f"{name}: not an exact pin: {line!r}"
        key = canonicalize_name(m[1])
        assert key not in pins, f"{name}: {m[1]} pinned twice"
        pins[key] = m[2]
    return pins


def _requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    env = default_environment()
    return [r for r in map(Requirement, reqs) if r.marker is None or r.marker.evaluate({**env, "extra": ""})]


# scripts/setup_lmms.sh leaves Triton out on a CPU torch (GPU-only kernels; the torch path runs without)
@pytest.mark.parametrize(("lock", "extras", "left_out"),
                         [("constraints.txt", ("dev",), ()), ("constraints-lmms.txt", ("lmms",), ("triton",))])
def test_lock_pins_every_dependency_inside_the_pyproject_range(lock, extras, left_out):
    pins = _lock(lock)
    bad = []
    for req in _requirements(*extras):
        if req.name in left_out:
            continue
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            bad.append(f"{req.name}: not in {lock}")
        elif not req.specifier.contains(version, prereleases=True):
            bad.append(f"{req.name}=={version} outside pyproject's {req.specifier}")
    assert not bad, f"{lock} disagrees with pyproject.toml: {bad}; rerun scripts/lock.sh after the suite passes"


def test_setup_installs_the_locked_torch_and_the_env_has_the_locked_versions():
    pins = _lock("constraints.txt")
    assert "torch==${DYNVLM_TORCH_VERSION:-$locked_torch}" in (ROOT / "scripts" / "setup.sh").read_text()
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() or os.environ.get("DYNVLM_NEWEST") == "1":
        pytest.skip("not running in the checkout's locked .venv")
    installed = {canonicalize_name(d.metadata["Name"]): d.version.split("+")[0] for d in importlib.metadata.distributions()}
    off = {n: (v, installed.get(n)) for n, v in pins.items() if installed.get(n) != v}
    assert not off, f".venv differs from constraints.txt (locked, installed): {off}"
