"""dynvlm.model.checkpoint: files load without running code, and a checkpoint that does not fit the
model is refused; the run layer refuses stale run folders and sweep points (dynvlm.run.train/sweep).

Every test uses real files: checkpoints written by a real 2-step ``dynvlm fit`` of a tiny model,
pickles that would run a shell command when unpickled, and the real commands.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from tiny_vlm import ENCODER, LLM

from dynvlm.cli.main import main
from dynvlm.config import ConfigError, load_config
from dynvlm.data.synth import vocabulary
from dynvlm.evaluation.command import evaluate_cli
from dynvlm.model.checkpoint import (
    CheckpointRefused,
    IncompleteCheckpoint,
    checkpoint_exists,
    read_checkpoint,
    read_weights,
)
from dynvlm.model.video_llm import VideoLLM
from dynvlm.run import train
from dynvlm.run.sweep import run
from dynvlm.util.tables import read_csv_rows


class RunsCode:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def config(tmp_path: Path, synth: Path, **changes) -> OmegaConf:
    cfg = OmegaConf.create({
        "name": "trusted", "output_dir": str(tmp_path / "runs"),
        "model": {"encoder": {"name": "clip", "config": dict(ENCODER)}, "compressor": {"name": "pool"},
                  "llm": {"name": "hf", "config": dict(LLM), "vocabulary": vocabulary(max_duration=14, options=4)}},
        "budget": {"max_tokens": 36, "max_frames": 8, "tokens_per_frame": 4},
        "data": {"train": str(synth / "train.jsonl"), "test": str(synth / "test_mc.jsonl"), "batch_size": 2},
        "optim": {"lr": 0.01},
        "trainer": {"accelerator": "cpu", "max_steps": 2, "limit_val_batches": 0, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False, "enable_model_summary": False, "logger": False},
    })
    return OmegaConf.merge(cfg, changes)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth):
    folder = tmp_path_factory.mktemp("trained")
    cfg = config(folder, synth)
    return cfg, train.fit(cfg)["checkpoint"]


# ------------------------------------------------------------------------------------------
# safe loading


def test_a_checkpoint_that_runs_code_is_refused_and_the_code_never_runs(tmp_path, synth, trained):
    cfg, good = trained
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({**torch.load(good, weights_only=True), "payload": RunsCode(marker)}, evil)
    with pytest.raises(CheckpointRefused, match=r"evil\.ckpt.*posix\.system"):
        evaluate_cli(cfg, checkpoint=str(evil), out=str(tmp_path / "out"))
    with pytest.raises(CheckpointRefused):
        train.test(cfg, checkpoint=str(evil))  # Lightning's own loading path
    assert main(["eval", "--checkpoint", str(evil), *_config_args(tmp_path, cfg)]) == 2  # a clear CLI error
    assert not marker.exists()


def test_a_weights_file_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "weights.pt"
    torch.save({"projector.net.0.weight": torch.zeros(2, 2), "x": RunsCode(marker)}, evil)
    with pytest.raises(CheckpointRefused, match=r"weights\.pt"):
        read_weights(evil)
    assert not marker.exists()


def test_dynvlm_checkpoints_load_weights_only(trained):
    data = read_checkpoint(trained[1])
    assert data["state_dict"] and data["dynvlm"]["trainable"]


def test_a_folder_that_is_not_a_sharded_checkpoint_is_refused_naming_what_it_lacks(tmp_path, synth, capsys):
    """Sharded checkpoints are folders (tests/test_fsdp.py evaluates a real one); any other folder is
    refused by every reader, naming it and the files it lacks, and never stands in for the config's weights."""
    from dynvlm.lmms.loading import CheckpointError, load_checkpoint, load_model

    cfg = config(tmp_path, synth)
    empty = tmp_path / "copied.ckpt"
    empty.mkdir()
    lacks = "it lacks meta.pt and .metadata"
    assert not checkpoint_exists(empty) and not checkpoint_exists(tmp_path / "gone.ckpt")
    with pytest.raises(ConfigError, match=re.escape(f"--checkpoint '{empty}': a folder, but not a sharded checkpoint: {lacks}")):
        evaluate_cli(cfg, checkpoint=str(empty), out=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=re.escape(f"checkpoint '{empty}': a folder, but not a sharded checkpoint: {lacks}")):
        read_checkpoint(empty)
    with pytest.raises(ConfigError, match=re.escape(f"stage.resume_from '{empty}': a folder, but not a sharded checkpoint: {lacks}")):
        read_weights(empty)
    with pytest.raises(CheckpointError, match=re.escape(f"dynvlm checkpoint '{empty}': a folder, but not a sharded checkpoint: {lacks}")):
        load_checkpoint(empty)
    config_file = Path(_config_args(tmp_path, cfg)[0])
    with pytest.raises(CheckpointError, match=re.escape(f"dynvlm checkpoint '{empty}': a folder")):
        load_model(empty, config=config_file)

    # a damaged last.ckpt folder (meta.pt, no index) fails naming it: not quietly the config's own weights
    last = tmp_path / "runs" / "trusted" / "checkpoints" / "last.ckpt"
    last.mkdir(parents=True)
    (last / "meta.pt").write_bytes(b"")
    for evaluate in (lambda: evaluate_cli(cfg, out=str(tmp_path / "out")),
                     lambda: evaluate_cli(OmegaConf.merge(cfg, {"sweep": {"model.compressor.name": ["pool"]}}),
                                          out=str(tmp_path / "out")),
                     lambda: train.test(cfg)):
        with pytest.raises(ConfigError, match=re.escape(f"'{last}': ") + ".*it lacks .metadata"):
            evaluate()
    assert main(["eval", *_config_args(tmp_path, cfg)]) == 2
    err = capsys.readouterr().err
    assert "dynvlm: error:" in err and str(last) in err and "lacks .metadata" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------
# complete loading


def test_an_empty_checkpoint_is_refused_naming_what_it_lacks(tmp_path, trained):
    cfg, _ = trained
    empty = tmp_path / "empty.ckpt"
    torch.save({"state_dict": {}}, empty)
    with pytest.raises(IncompleteCheckpoint, match=r"empty\.ckpt.* lacks 40 of the 40 weights .*encoder\.model\.embeddings"):
        evaluate_cli(cfg, checkpoint=str(empty), out=str(tmp_path / "out"))
    assert not (tmp_path / "out" / "eval.json").exists()  # no number from the wrong weights
    with pytest.raises(IncompleteCheckpoint, match="empty.ckpt"):
        train.test(cfg, checkpoint=str(empty))


def test_a_partial_checkpoint_is_refused_naming_the_missing_keys(tmp_path, trained):
    cfg, good = trained
    data = torch.load(good, weights_only=True)
    dropped = sorted(k for k in data["state_dict"] if k.startswith("llm."))[:2]
    for key in dropped:
        del data["state_dict"][key]
    partial = tmp_path / "partial.ckpt"
    torch.save(data, partial)
    with pytest.raises(IncompleteCheckpoint, match="lacks 2 of") as err:
        evaluate_cli(cfg, checkpoint=str(partial), out=str(tmp_path / "out"))
    assert all(key in str(err.value) for key in dropped)


def test_a_resume_from_file_without_weights_is_refused(tmp_path, synth):
    empty = tmp_path / "empty.pt"
    torch.save({}, empty)
    with pytest.raises(IncompleteCheckpoint, match="holds no weights"):
        VideoLLM(config(tmp_path, synth, stage={"name": "pretrain", "resume_from": str(empty)}))


def test_the_whole_checkpoint_loads(trained, tmp_path):
    cfg, good = trained
    report = evaluate_cli(cfg, checkpoint=str(good), out=str(tmp_path / "out"))
    assert report["questions"] > 0 and (tmp_path / "out" / "eval.json").is_file()


# ------------------------------------------------------------------------------------------
# stale runs and points


def _config_args(tmp_path: Path, cfg) -> list[str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    return [str(path)]


def test_a_fit_resume_with_a_changed_config_is_refused_or_redone(tmp_path, synth):
    cfg = config(tmp_path, synth, name="resumed")
    first = train.fit(cfg)
    assert first["global_step"] == 2
    changed = OmegaConf.merge(cfg, {"optim": {"lr": 0.001}, "trainer": {"max_steps": 3}})
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.01 -> 0\.001.*trainer\.max_steps: 2 -> 3.*--rerun-changed"):
        train.fit(changed)
    # keys that cannot change results do not count
    assert train.fit(OmegaConf.merge(cfg, {"trainer": {"enable_progress_bar": True}}))["global_step"] == 2
    again = train.fit(changed, rerun_changed=True)
    assert again["resumed_from"] is None and again["global_step"] == 3
    stale = [p.name for p in (tmp_path / "runs").iterdir() if p.name.startswith("resumed.stale-")]
    assert len(stale) == 1 and (tmp_path / "runs" / stale[0] / "checkpoints" / "last.ckpt").is_file()  # kept


def test_a_sweep_rerun_after_a_base_config_change_refuses_or_reruns_the_changed_points(tmp_path, synth):
    sweep = {**OmegaConf.to_container(config(tmp_path, synth, name="sweep"), resolve=True),
             "sweep": {"budget.tokens_per_frame": [1, 4]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    first = run(load_config(path))
    assert first["ran"] == 2
    rows = read_csv_rows(tmp_path / "runs" / "sweep" / "results.csv")
    assert all(r["fingerprint"] for r in rows)
    assert run(load_config(path))["ran"] == 0  # nothing changed: nothing re-runs
    with pytest.raises(ConfigError, match=r"(?s)2 point\(s\) run with another config.*trainer\.max_steps: 2 -> 3"):
        run(load_config(path, ["trainer.max_steps=3"]))
    assert read_csv_rows(tmp_path / "runs" / "sweep" / "results.csv") == rows  # nothing lost
    redone = run(load_config(path, ["trainer.max_steps=3"]), rerun_changed=True)
    assert redone["ran"] == 2
    new_rows = read_csv_rows(tmp_path / "runs" / "sweep" / "results.csv")
    assert len(new_rows) == 2 and {r["global_step"] for r in new_rows} == {"3"}
    assert {r["fingerprint"] for r in new_rows}.isdisjoint({r["fingerprint"] for r in rows})
