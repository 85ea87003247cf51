"""The dynvlm command and the lightning console script, run as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from plugin_factory import make_distribution

import dynvlm

BIN = Path(sys.executable).parent


def run(cmd: list[str], env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)


def test_dynvlm_plugins_table():
    out = run([str(BIN / "dynvlm"), "plugins"])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["kind", "name", "class", "distribution", "version"]
    row = next(line.split() for line in lines if line.split()[:2] == ["compressor", "pool"])
    assert row[2] == "dynvlm.plugins.compressors.pool.AdaptivePool"
    assert row[3:] == ["dynvlm", dynvlm.__version__]


def test_python_m_dynvlm_print_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\nbudget: {max_tokens: 64}\n")
    out = run([sys.executable, "-m", "dynvlm", "fit", str(cfg), "budget.max_tokens=32", "--print-config"])
    assert out.returncode == 0, out.stderr
    assert "max_tokens: 32" in out.stdout and "name: x" in out.stdout


def test_bad_config_exits_2_with_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  compressor: {name: nope}\n")
    out = run([str(BIN / "dynvlm"), "run", str(cfg), "--print-config"])
    assert out.returncode == 2
    assert "model.compressor.name" in out.stderr and "nope" in out.stderr and "pool" in out.stderr


def test_cost_of_a_checkpoint_that_is_absent_and_unknown_exits_2_naming_the_options(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  encoder: {name: clip, path: /nowhere/my-vit}\n  compressor: {name: pool}\n"
                   "  llm: {name: hf, path: /nowhere/my-llm}\n")
    out = run([str(BIN / "dynvlm"), "cost", str(cfg), "budget.max_tokens=64", "--duration", "10"])
    assert out.returncode == 2, out.stderr
    err = out.stderr
    assert "model.encoder.path" in err and "/nowhere/my-vit" in err and "--encoder-config" in err
    assert "Qwen2.5-7B-Instruct" in err  # the known architectures are listed


def test_cost_overrides_come_after_the_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  encoder: {name: clip, path: /nowhere/clip-vit-large-patch14-336}\n  compressor: {name: pool}\n"
                   "  llm: {name: hf, path: /nowhere/Qwen2.5-7B-Instruct}\nbudget: {max_tokens: 12000}\n")
    out = run([str(BIN / "dynvlm"), "cost", str(cfg), "budget.max_tokens=576", "--duration", "10", "--json"])
    assert out.returncode == 0, out.stderr
    cost = json.loads(out.stdout)
    assert cost["frames"] == 10 and 0 < cost["visual_tokens"] <= 576  # the override's budget, not the file's
    assert cost["device"] == "meta" and cost["flops_llm_prefill"] > cost["flops_encoder"] > 0


def test_lightning_unknown_command_names_dynvlm():
    out = run([str(BIN / "lightning"), "frobnicate"])
    assert out.returncode != 0
    assert "dynvlm" in out.stderr and "lightning frobnicate" in out.stderr


@pytest.fixture
def other_lightning(tmp_path):
    """A second installed distribution that provides its own `lightning` console script."""
    root = make_distribution(
        tmp_path / "site",
        "other-lightning",
        "9.9",
        {"other_lightning_cli": "import sys\n\ndef main():\n    print('OTHER LIGHTNING GOT', sys.argv[1:])\n    return 0\n"},
        {"console_scripts": {"lightning": "other_lightning_cli:main"}},
    )
    return {"PYTHONPATH": str(root)}


def test_lightning_run_model_is_handed_to_the_owner(other_lightning):
    out = run([str(BIN / "lightning"), "run", "model", "train.py", "--devices", "2"], env=other_lightning)
    assert out.returncode == 0, out.stderr
    assert "OTHER LIGHTNING GOT ['run', 'model', 'train.py', '--devices', '2']" in out.stdout


def test_lightning_run_model_without_owner_fails_naming_dynvlm():
    out = run([str(BIN / "lightning"), "run", "model", "train.py"])
    assert out.returncode != 0
    assert "dynvlm" in out.stderr and "lightning run model train.py" in out.stderr


def test_lightning_run_yaml_dispatches_to_dynvlm_run(tmp_path, other_lightning):
    """`lightning run X.yaml` is dynvlm's even when another package also provides `lightning`."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: from-lightning\n")
    out = run([str(BIN / "lightning"), "run", str(cfg), "seed=7", "--print-config"], env=other_lightning)
    assert out.returncode == 0, out.stderr
    assert "name: from-lightning" in out.stdout and "seed: 7" in out.stdout and "OTHER" not in out.stdout
