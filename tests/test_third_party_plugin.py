"""The worked example of docs/plugins.md, built and pip-installed as a real package."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dynvlm
from dynvlm.config import load_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
BIN = Path(sys.executable).parent


def doc_blocks() -> dict[str, str]:
    """The fenced blocks that follow a `file name` line in docs/plugins.md."""
    text = DOC.read_text()
    return dict(re.findall(r"^`([\w.]+)`\n\n```\w+\n(.*?)```", text, flags=re.MULTILINE | re.DOTALL))


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def installed_stride_plugin(tmp_path):
    blocks = doc_blocks()
    assert set(blocks) == {"pyproject.toml", "dynvlm_stride.py"}
    code_lines = [line for line in blocks["dynvlm_stride.py"].splitlines() if line.strip() and not line.lstrip().startswith(("#", '"""'))]
    assert len(code_lines) <= 35, "the worked example should stay about 30 lines"
    pkg = tmp_path / "dynvlm-stride"
    pkg.mkdir()
    for name, body in blocks.items():
        (pkg / name).write_text(body)
    out = pip("install", "-q", "--no-deps", "--no-build-isolation", str(pkg))
    assert out.returncode == 0, out.stderr
    importlib.invalidate_caches()
    try:
        yield
    finally:
        pip("uninstall", "-y", "-q", "dynvlm-stride")
        sys.modules.pop("dynvlm_stride", None)
        importlib.invalidate_caches()
        dynvlm.get_registry(refresh=True)


def test_third_party_compressor_end_to_end(installed_stride_plugin, tmp_path):
    listing = subprocess.run([str(BIN / "dynvlm"), "plugins"], capture_output=True, text=True, env=os.environ, timeout=120)
    assert listing.returncode == 0, listing.stderr
    row = next(line.split() for line in listing.stdout.splitlines() if line.split()[:2] == ["compressor", "stride"])
    assert row[2:] == ["dynvlm_stride.StrideCompressor", "dynvlm-stride", "0.1.0"]

    registry = dynvlm.get_registry(refresh=True)
    assert registry.get("compressor", "stride").distribution == "dynvlm-stride"
    spec_file = tmp_path / "exp.yaml"
    spec_file.write_text("model:\n  compressor: {name: stride, offset: 1}\n")
    cfg = load_config(spec_file)
    comp = dynvlm.build_component("compressor", cfg.model.compressor, dim=6)
    assert comp.provenance["distribution"] == "dynvlm-stride"
    x = torch.randn(3, 16, 6)
    out = comp(x, (4, 4), 5)
    assert out.x.shape == (3, 5, 6)
    assert torch.equal(out.x, x[:, out.positions[0]])
    assert bool((out.positions[0].diff() > 0).all())

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  compressor: {name: stride, ofset: 1}\n")
    with pytest.raises(dynvlm.ConfigError, match=r"unknown key 'ofset' for compressor 'stride'.*valid keys: name, offset"):
        load_config(bad)
