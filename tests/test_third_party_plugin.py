"""The worked examples of docs/plugins.md (a compressor, a budget policy), built and pip-installed as real packages."""

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


def doc_blocks(package: str = "") -> dict[str, str]:
    """The fenced blocks that follow a `file name` line in docs/plugins.md: those named plainly
    (the compressor example), or those under `package/` (file name -> text)."""
    text = DOC.read_text()
    blocks = dict(re.findall(r"^`([\w./-]+)`\n\n```\w+\n(.*?)```", text, flags=re.MULTILINE | re.DOTALL))
    prefix = f"{package}/" if package else ""
    return {k.removeprefix(prefix): v for k, v in blocks.items() if k.startswith(prefix) and "/" not in k.removeprefix(prefix)}


def install_doc_package(tmp_path: Path, package: str, blocks: dict[str, str], module: str):
    """Write ``blocks`` into ``tmp_path/package``, pip-install it; the caller uninstalls (see ``uninstall``)."""
    code_lines = [line for line in blocks[f"{module}.py"].splitlines() if line.strip() and not line.lstrip().startswith(("#", '"""'))]
    assert len(code_lines) <= 35, "the worked example should stay about 30 lines"
    pkg = tmp_path / package
    pkg.mkdir()
    for name, body in blocks.items():
        (pkg / name).write_text(body)
    out = pip("install", "-q", "--no-deps", "--no-build-isolation", str(pkg))
    assert out.returncode == 0, out.stderr
    importlib.invalidate_caches()


def uninstall(package: str, module: str) -> None:
    pip("uninstall", "-y", "-q", package)
    sys.modules.pop(module, None)
    importlib.invalidate_caches()
    dynvlm.get_registry(refresh=True)


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def installed_stride_plugin(tmp_path):
    blocks = doc_blocks()
    assert set(blocks) == {"pyproject.toml", "dynvlm_stride.py"}
    install_doc_package(tmp_path, "dynvlm-stride", blocks, "dynvlm_stride")
    try:
        yield
    finally:
        uninstall("dynvlm-stride", "dynvlm_stride")


@pytest.fixture
def installed_recent_policy(tmp_path):
    blocks = doc_blocks("dynvlm-recent")
    assert set(blocks) == {"pyproject.toml", "dynvlm_recent.py"}
    install_doc_package(tmp_path, "dynvlm-recent", blocks, "dynvlm_recent")
    try:
        yield
    finally:
        uninstall("dynvlm-recent", "dynvlm_recent")


def _listed(kind: str, name: str) -> list[str]:
    """The ``dynvlm plugins`` row of ``kind``/``name`` after the kind and name: class, distribution, version."""
    listing = subprocess.run([str(BIN / "dynvlm"), "plugins"], capture_output=True, text=True, env=os.environ, timeout=120)
    assert listing.returncode == 0, listing.stderr
    return next(line.split()[2:] for line in listing.stdout.splitlines() if line.split()[:2] == [kind, name])


def test_third_party_compressor_end_to_end(installed_stride_plugin, tmp_path):
    assert _listed("compressor", "stride") == ["dynvlm_stride.StrideCompressor", "dynvlm-stride", "0.1.0"]

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


def test_third_party_budget_policy_end_to_end(installed_recent_policy, tmp_path):
    from dynvlm.budget import BudgetPolicy, VideoInfo

    assert _listed("budget", "recent") == ["dynvlm_recent.RecentPolicy", "dynvlm-recent", "0.1.0"]

    registry = dynvlm.get_registry(refresh=True)
    assert registry.get("budget", "recent").distribution == "dynvlm-recent"
    spec_file = tmp_path / "exp.yaml"
    spec_file.write_text("budget:\n  max_tokens: 1000\n  policy: {name: recent, tokens_per_frame: 120}\n")
    cfg = load_config(spec_file)
    pool = dynvlm.build_component("compressor", {"name": "pool"}, dim=8)
    budget = BudgetPolicy(cfg.budget, (24, 24), pool.achievable)
    assert budget.policy.provenance["distribution"] == "dynvlm-recent"
    video = VideoInfo(tuple(float(t) for t in range(30)), duration=30.0)
    plan = budget.plan(video)
    assert plan.tokens == 120 and plan.indices == tuple(range(22, 30))  # 1000 // 120 = 8 frames, the last ones
    full = BudgetPolicy({"max_tokens": 1200, "policy": "recent"}, (24, 24), pool.achievable).plan(video)
    assert full.tokens == 576 and full.indices == (28, 29)  # the default: all N tokens, 1200 // 576 = 2 frames
    with pytest.raises(dynvlm.ConfigError, match=r"unknown key 'tokens' for budget 'recent'; valid keys: name, tokens_per_frame"):
        BudgetPolicy({"policy": {"name": "recent", "tokens": 8}}, (24, 24))
