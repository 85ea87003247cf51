"""dynvlm eval: a config without a data section, a multiple-choice file, results in their own folder."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf
from tiny_vlm import ENCODER, LLM

from dynvlm.config import ConfigError
from dynvlm.data.synth import generate, vocabulary
from dynvlm.evaluate import evaluate_cli


@pytest.fixture(scope="module")
def mc_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("evalsynth") / "synth"
    generate({"out": str(out), "seed": 3, "train": 0, "val": 0, "test": 2, "size": 16, "min_duration": 12,
              "max_duration": 14, "max_visits": 2, "max_visit_seconds": 3}, progress=False)
    return out / "test_mc.jsonl"


def config(tmp_path):
    return OmegaConf.create({
        "name": "evalrun",
        "output_dir": str(tmp_path / "runs"),
        "model": {
            "encoder": {"name": "clip", "config": dict(ENCODER)},
            "compressor": {"name": "pool"},
            "llm": {"name": "hf", "config": dict(LLM), "vocabulary": vocabulary(max_duration=14, options=4)},
        },
        "budget": {"max_tokens": 16, "max_frames": 8, "tokens_per_frame": 4},
        "trainer": {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False},
    })


def test_eval_without_data_section_writes_its_own_folder(tmp_path, mc_file):
    cfg = config(tmp_path)
    report = evaluate_cli(cfg, data=str(mc_file))
    folder = tmp_path / "runs" / "evalrun" / "eval" / "test_mc"
    assert report["written"] == str(folder)
    questions = len(mc_file.read_text().splitlines())
    saved = json.loads((folder / "eval.json").read_text())
    assert saved["questions"] == questions and 0.0 <= saved["accuracy"] <= 1.0
    assert saved["compressor"] == "pool" and saved["tokens_per_frame"] == 4
    assert set(saved["per_category"]) <= {"perception", "spatial", "temporal", "counting"} and saved["per_category"]
    assert len((folder / "predictions.jsonl").read_text().splitlines()) == questions
    assert not (tmp_path / "runs" / "evalrun" / "predictions.jsonl").exists()  # the run's own file is untouched
    assert "| **overall** |" in (folder / "eval.md").read_text()


def test_eval_errors_name_what_is_missing(tmp_path):
    cfg = config(tmp_path)
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        evaluate_cli(cfg)
    with pytest.raises(ConfigError, match="--data 'nope.jsonl': no such file"):
        evaluate_cli(cfg, data="nope.jsonl")
    with pytest.raises(ConfigError, match="--checkpoint 'gone.ckpt': no such file"):
        evaluate_cli(OmegaConf.merge(cfg, {"data": {"test": "t.jsonl"}}), checkpoint="gone.ckpt")
