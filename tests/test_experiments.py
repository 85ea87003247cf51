"""experiments/: every YAML loads and validates, the tiny base's recipe runs, the shipped base loads by
``path:`` and answers, and the base never trained on a test clip."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest
from tiny_vlm import save_clip, save_qwen

from dynvlm import load_config
from dynvlm.data.synth import draw_scenes, make_config

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
WEIGHTS = EXPERIMENTS / "tiny_base" / "weights"
TRANSFER = EXPERIMENTS / "transfer.yaml"
REAL = sorted(p for p in (EXPERIMENTS / "dynamic_vlm_7b").glob("*.yaml") if p.stem != "common")
sys.path.insert(0, str(EXPERIMENTS / "tiny_base"))


def yaml_files() -> list[Path]:
    """Every run config in experiments/ (lmms_tasks/ holds lmms-eval task files, not run configs)."""
    return sorted(p for p in EXPERIMENTS.rglob("*.yaml") if "lmms_tasks" not in p.relative_to(EXPERIMENTS).parts)


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("ckpt")
    return save_clip(folder / "clip"), save_qwen(folder / "qwen")


@pytest.mark.parametrize("path", [p for p in yaml_files() if p not in REAL], ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_experiment_yaml_loads_and_validates(path):
    cfg = load_config(path)
    assert cfg.model.encoder.name and cfg.model.llm.name
    if "sweep" in cfg:
        from dynvlm.config import sweep_points

        assert len(sweep_points(cfg.sweep)) >= 2
    for key in ("encoder", "llm"):  # paths name files beside the recipe, whatever the working directory
        if cfg.model[key].get("path"):
            assert Path(cfg.model[key].path).is_absolute()


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_real_checkpoint_recipes_need_only_their_paths(path, tiny_checkpoints):
    clip, qwen = tiny_checkpoints
    raw = path.read_text() + (path.parent / "common.yaml").read_text()
    assert "/path/to/clip-vit-large-patch14-336" in raw and "/path/to/Qwen2.5-7B-Instruct" in raw
    cfg = load_config(path, [f"model.encoder.path={clip}", f"model.llm.path={qwen}"])
    assert cfg.budget.max_tokens == 12000 and cfg.optim.encoder_lr_ratio == 0.2
    assert cfg.model.encoder.name == "clip" and cfg.model.llm.name == "hf"
    if path.stem != "pretrain":
        assert cfg.stage.resume_from.endswith("checkpoints/last.ckpt")
    from dynvlm.model.video_llm import VideoLLM

    cfg.stage.resume_from = None
    cfg.model.encoder.dtype = cfg.model.llm.dtype = "float32"
    model = VideoLLM(cfg)  # the recipe builds with real (tiny) checkpoints in place of the 7B ones
    assert model.stage.name == path.stem


def test_base_recipe_runs_a_few_steps(tmp_path):
    import make_base

    tiny = ["data.synth.train=6", "data.synth.val=2", "data.synth.test=0", "data.batch_size=3",
            "data.eval_batch_size=8", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
    weights = tmp_path / "weights"
    rc = make_base.main(["--stages", ",".join([*make_base.STAGES, "export"]), "--steps", "2", "--runs", str(tmp_path / "runs"),
                         "--data", str(tmp_path / "data"), "--weights", str(weights), *tiny])
    assert rc == 0
    manifest = json.loads((weights / "manifest.json").read_text())
    assert [manifest["stages"][s]["steps"] for s in make_base.STAGES] == [2] * len(make_base.STAGES)
    assert set(manifest["files"]) >= {"encoder/model.safetensors", "llm/model.safetensors", "projector.safetensors"}
    assert manifest["trained_on"]["synth"]["train"] == 6
    acc = make_base.evaluate(weights, tmp_path / "runs", compressors=["pool"], tokens=[4], overrides=tiny,
                             data=tmp_path / "data")
    assert 0.0 <= acc["pool@M=4"]["acc"] <= 1.0 and acc["pool@M=4"]["ceiling/overall"] == 1.0


def test_shipped_base_matches_its_manifest():
    import make_base

    manifest = json.loads((WEIGHTS / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        assert make_base.sha256(WEIGHTS / name) == digest, name
    assert sum((WEIGHTS / n).stat().st_size for n in manifest["files"]) < 8 * 2**20  # a few MB
    for key in ("command", "recipe", "machine", "stages", "wall_s", "accuracy_val", "trained_on"):
        assert key in manifest
    # the recipe in the repository is the one that made the weights, and it trains on the recorded data
    assert manifest["recipe_sha256"] == make_base.recipe_digest()
    from omegaconf import OmegaConf

    synth = OmegaConf.to_container(make_base.stage_config(make_base.STAGES[-1], None, None, []).data.synth)
    synth.pop("out")
    assert manifest["trained_on"]["synth"] == synth


def test_shipped_base_loads_by_path_and_answers(tmp_path):
    from omegaconf import OmegaConf

    from dynvlm.run import train
    small = dict(train=0, val=0, test=2)
    cfg = load_config(EXPERIMENTS / "synthetic.yaml",
                      [f"output_dir={tmp_path / 'runs'}", f"data.synth.out={tmp_path / 'synth'}",
                       *(f"data.synth.{k}={v}" for k, v in small.items()), "trainer.enable_progress_bar=false"])
    assert cfg.model.encoder.path == str(WEIGHTS / "encoder") and cfg.model.llm.path == str(WEIGHTS / "llm")
    res = train.test(cfg)
    synth_cfg = make_config(OmegaConf.to_container(cfg.data.synth, resolve=True))
    clips = [json.loads(line) for line in open(Path(str(cfg.data.synth.out)) / "test.jsonl")]
    asked = sum(len(synth_cfg.qtypes_for(int(c["duration"]))) for c in clips)  # short and long mixes
    assert len(clips) == 2 and res["test/n"] == asked
    assert 0.0 <= res["test/acc"] <= 1.0
    preds = [json.loads(line) for line in open(Path(res["run_dir"]) / "predictions.jsonl")]
    assert len(preds) == asked and all(p["pred"] in range(4) for p in preds)


def _scenes(settings: dict, split: str) -> list:
    """The scenes of ``split`` that :func:`dynvlm.data.synth.generate` draws for ``settings``."""
    return draw_scenes(make_config({**settings, "out": "unused"}))[split]


def test_no_test_clip_or_question_in_the_base_training_data():
    manifest = json.loads((WEIGHTS / "manifest.json").read_text())
    trained = dict(manifest["trained_on"]["synth"])
    trained.pop("version", None)
    train_scenes = _scenes({**trained, "val": 0, "test": 0}, "train")
    assert len(train_scenes) == trained["train"]
    train_sigs = {sc.signature() for sc in train_scenes}
    for path in (EXPERIMENTS / "synthetic.yaml", EXPERIMENTS / "ablate.yaml"):
        synth = dict(load_config(path).data.synth)
        synth.pop("out")
        test_scenes = _scenes(synth, "test")
        assert test_scenes and not train_sigs & {sc.signature() for sc in test_scenes}
        # a question is about one clip: with the clips disjoint, no (clip, question) pair repeats;
        # the ids of generated records ("test_000123_q4") never name a training clip either
        assert not {sc.id for sc in train_scenes} & {sc.id for sc in test_scenes}
        # the scenes are the base's (seed, frame, symbols, flashes), at clip and flash lengths it was trained on
        for key in ("seed", "size", "symbols", "max_visits", "flashes"):
            assert synth[key] == trained[key], key
        assert all(trained["min_duration"] <= sc.duration <= trained["max_duration"] for sc in test_scenes)
        assert all(trained["min_flash_seconds"] <= f.seconds <= trained["max_flash_seconds"]
                   for sc in test_scenes for f in sc.flashes)


# ---------------------------------------------------------------------------------------------
# transfer.yaml: training-free evaluation of the model synthetic.yaml trains


def test_transfer_yaml_asks_for_the_synthetic_model_first(tmp_path):
    from dynvlm.config import ConfigError
    from dynvlm.evaluation.command import evaluate_cli

    cfg = load_config(TRANSFER, [f"output_dir={tmp_path / 'runs'}"])
    missing = tmp_path / "runs" / "synthetic" / "checkpoints" / "last.ckpt"
    hint = f"{missing} does not exist. Train the model first (dynvlm fit {EXPERIMENTS / 'synthetic.yaml'})"
    with pytest.raises(ConfigError, match=re.escape(hint)):
        evaluate_cli(cfg, config_path=str(TRANSFER))


def test_transfer_yaml_evaluates_the_synthetic_model_at_every_point(tmp_path):
    from dynvlm.config import sweep_points
    from dynvlm.evaluation.command import evaluate_cli
    from dynvlm.run import train

    small = [f"output_dir={tmp_path / 'runs'}", f"data.synth.out={tmp_path / 'synth'}", "data.synth.train=2",
             "data.synth.test=1", "data.batch_size=2", "trainer.max_steps=1", "trainer.enable_progress_bar=false"]
    fitted = train.fit(load_config(EXPERIMENTS / "synthetic.yaml", small))
    cfg = load_config(TRANSFER, small)
    result = evaluate_cli(cfg, config_path=str(TRANSFER))  # the default checkpoint: the synthetic run's
    assert result["checkpoint"] == fitted["checkpoint"] and result["trained_with"]["label"] == "pool@4"
    with open(result["results"], newline="") as f:
        rows = list(csv.DictReader(f))
    points = sweep_points(cfg.sweep)
    assert len(rows) == len(points) and [r["compressor"] for r in rows] == [p["model.compressor.name"] for p in points]
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 and int(r["questions"]) > 0 for r in rows)
    identity = next(r for r in rows if r["compressor"] == "identity")
    assert identity["used_tokens_per_frame"] == "64" and float(identity["frames_per_sample"]) == 2.0  # 8x8 grid, N_max 128
    md = Path(result["results_md"]).read_text()
    assert "- trained with pool@4" in md and "| pool * | 4 |" in md
