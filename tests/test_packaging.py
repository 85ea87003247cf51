"""Packaging: the wheel holds every module, and every first-party plugin is an entry point."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPING = {"core": "dynvlm", "plugins": "dynvlm/plugins", "kernels": "dynvlm/kernels"}


def source_modules() -> set[str]:
    """Wheel paths every .py file under the mapped folders must have."""
    expected = set()
    for folder, target in MAPPING.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                expected.add(f"{target}/{path.relative_to(ROOT / folder).as_posix()}")
    return expected


def test_wheel_contains_every_module(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    [wheel] = tmp_path.glob("dynvlm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(source_modules() - names)
    assert not missing, f"modules left out of the wheel: {missing}"
    assert not any(n.startswith(("core/", "plugins/", "kernels/", "tests/")) for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[dynvlm]" in text and "pool = dynvlm.plugins.compressors.pool" in text


def declared_plugin_modules() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["entry-points"]["dynvlm"]


def test_every_first_party_plugin_module_is_declared():
    declared = set(declared_plugin_modules().values())
    hook = re.compile(r"^@(dynvlm\.)?hookimpl", re.MULTILINE)
    with_hooks = set()
    for path in (ROOT / "plugins").rglob("*.py"):
        if hook.search(path.read_text()):
            rel = path.relative_to(ROOT / "plugins").with_suffix("")
            with_hooks.add("dynvlm.plugins." + ".".join(rel.parts))
    assert with_hooks, "no plugin modules found"
    assert with_hooks <= declared, f"plugin modules with hookimpls but no entry point: {sorted(with_hooks - declared)}"


def test_every_declared_entry_point_module_exists():
    for name, module in declared_plugin_modules().items():
        assert module.startswith("dynvlm.plugins."), name
        rel = module.removeprefix("dynvlm.plugins.").replace(".", "/")
        assert (ROOT / "plugins" / f"{rel}.py").is_file(), f"entry point {name} -> {module} has no file"
