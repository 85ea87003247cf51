"""fit / validate / test on a real Lightning Trainer (CPU), resume after a crash, and DDP with 2 processes (gloo)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from tiny_vlm import ListDataModule, colour_samples, inline_model, run_config

from dynvlm.config import load_config, to_yaml
from dynvlm.run.train import fit, test, validate

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return colour_samples(tmp_path_factory.mktemp("videos"), 6)


def _yaml_config(tmp_path, **sections):
    """Write the run config to YAML and load it the way the CLI does (validation included)."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run_config(tmp_path / "runs", **sections)))
    return load_config(path)


def test_fit_lowers_the_loss_and_writes_the_run(tmp_path, samples):
    trainer = {"accelerator": "cpu", "devices": 1, "max_steps": 10, "enable_progress_bar": False,
               "enable_model_summary": False, "log_every_n_steps": 1, "num_sanity_val_steps": 0}
    cfg = _yaml_config(tmp_path, trainer=trainer)
    dm = ListDataModule(samples, batch_size=6)
    before = validate(cfg, datamodule=dm)
    assert before["checkpoint"] is None  # nothing trained yet: the weights the config builds
    result = fit(cfg, dm)
    assert result["global_step"] == 10 and result["world_size"] == 1
    after = validate(cfg, datamodule=dm)
    assert after["checkpoint"] == result["checkpoint"]
    assert after["val/loss"] < 0.7 * before["val/loss"]

    run = Path(result["run_dir"])
    assert (run / "config.yaml").read_text() == to_yaml(cfg)
    hparams = yaml.safe_load(next((run / "logs").glob("version_*/hparams.yaml")).read_text())
    assert hparams["provenance"] == {"encoder/clip": "dynvlm==0.1.0", "compressor/pool": "dynvlm==0.1.0",
                                     "llm/hf": "dynvlm==0.1.0", "budget/dynamic": "dynvlm==0.1.0"}
    ckpt = torch.load(result["checkpoint"], weights_only=False)
    assert ckpt["hyper_parameters"]["config"]["model"]["compressor"] == {"name": "pool"}
    assert set(ckpt["state_dict"]) and all(k.split(".")[0] in ("encoder", "projector", "llm") for k in ckpt["state_dict"])
    # the checkpoint alone rebuilds the model: config from its hparams, weights from its state dict
    from dynvlm.model.video_llm import VideoLLM

    restored = VideoLLM.load_from_checkpoint(result["checkpoint"])
    for key in ("projector.net.0.weight", "llm.model.lm_head.weight", "encoder.model.embeddings.patch_embedding.weight"):
        torch.testing.assert_close(restored.state_dict()[key], ckpt["state_dict"][key])

    scores = test(cfg, datamodule=dm)
    assert scores["test/n"] == 6 and 0.0 <= scores["test/acc"] <= 1.0
    assert scores["test/acc/colour"] == scores["test/acc"]
    lines = (run / "predictions.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["question_id"] for x in lines) == [f"q{i}" for i in range(6)]


def test_fit_and_test_on_the_synthetic_data_module(tmp_path):
    from dynvlm.data import VideoDataModule
    from dynvlm.model.video_llm import VideoLLM

    model = inline_model()
    model["llm"]["vocabulary"] = "synthetic"  # the word-level tokenizer takes the synthetic task's word list
    synth = {"out": str(tmp_path / "synth"), "train": 4, "val": 2, "test": 4, "size": 16, "min_duration": 6,
             "max_duration": 8, "max_visits": 2, "max_visit_seconds": 2}
    cfg = _yaml_config(tmp_path, model=model, data={"synth": synth, "batch_size": 2},
                       budget={"max_tokens": 64, "max_frames": 8})
    result = fit(cfg)  # the DataModule comes from cfg.data
    assert result["global_step"] == 4 and result["train/loss"] > 0

    dm = VideoDataModule(cfg.data, cfg.budget)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    vlm = VideoLLM(cfg)
    encoded = vlm.encode_prompts(batch.samples, vlm.plan(batch.samples))
    assert all(vlm.llm.tokenizer.unk_token_id not in e.ids for e in encoded)  # every word is in the vocabulary
    assert all(len(e.answer_spans) == sum(t.role == "gpt" for t in s.conversation)
               for e, s in zip(encoded, batch.samples))

    scores = test(cfg)
    assert scores["test/n"] >= 4 and 0.0 <= scores["test/acc"] <= 1.0
    assert any(k.startswith("test/acc/") for k in scores)  # per-category accuracy


def test_a_trained_model_generates_open_ended_answers(tmp_path, samples):
    from dynvlm.records import Sample, Turn

    names = ["red", "green", "blue"]  # colour_samples cycles through them
    open_ended = [Sample(s.frames, s.timestamps, [Turn("human", "<video>\nwhat colour is the video ?"),
                                                  Turn("gpt", names[i % 3])],
                         id=f"o{i}", meta={"category": "colour", "question_id": f"o{i}"})
                  for i, s in enumerate(samples)]
    trainer = {"accelerator": "cpu", "max_steps": 40, "enable_progress_bar": False, "enable_model_summary": False,
               "logger": False, "limit_val_batches": 0}
    cfg = run_config(tmp_path, trainer=trainer, eval={"max_new_tokens": 3})
    dm = ListDataModule(open_ended, batch_size=6)
    fit(cfg, dm)
    scores = test(cfg, datamodule=dm)
    assert scores["test/n_open"] == 6
    assert scores["test/exact_match"] >= 0.8  # chance is 1/3; 30 steps already reach 6/6 on this machine
    texts = [json.loads(x)["text"] for x in (tmp_path / "tiny" / "predictions.jsonl").read_text().splitlines()]
    assert sum(t == names[i % 3] for i, t in enumerate(texts)) >= 5


class Crash(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 3:
            raise RuntimeError("simulated crash")


def test_an_interrupted_fit_resumes_from_its_last_checkpoint(tmp_path, samples):
    trainer = {"accelerator": "cpu", "max_steps": 5, "enable_progress_bar": False, "enable_model_summary": False,
               "logger": False, "limit_val_batches": 0}
    cfg = run_config(tmp_path, trainer=trainer, stage={"name": "video_sft", "checkpoint_every_n_steps": 2})
    dm = ListDataModule(samples, batch_size=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg, dm, callbacks=[Crash()])
    last = tmp_path / "tiny" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 2
    again = fit(cfg, dm)
    assert again["resumed_from"] == str(last)
    assert again["global_step"] == 5
    assert torch.load(last, weights_only=False)["global_step"] == 5


class CtrlC(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 3:
            raise KeyboardInterrupt


def test_ctrl_c_saves_the_step_reached(tmp_path, samples):
    import signal

    trainer = {"accelerator": "cpu", "max_steps": 4, "enable_progress_bar": False, "enable_model_summary": False,
               "logger": False, "limit_val_batches": 0}
    cfg = run_config(tmp_path, trainer=trainer)
    try:
        with pytest.raises(SystemExit):  # Lightning shuts down gracefully, then exits
            fit(cfg, ListDataModule(samples, batch_size=2), callbacks=[CtrlC()])
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores SIGINT after a Ctrl-C
    last = tmp_path / "tiny" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 3
    assert fit(cfg, ListDataModule(samples, batch_size=2))["global_step"] == 4


DDP_SCRIPT = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from tiny_vlm import ListDataModule, colour_samples, inline_model, run_config
import pytorch_lightning as pl
from dynvlm.run.train import fit


class Losses(pl.Callback):
    def __init__(self):
        self.values = []
        self.backend = None

    def on_train_start(self, trainer, module):
        import torch.distributed as dist

        self.backend = dist.get_backend()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))


root = Path({root!r})
rank = os.environ.get("LOCAL_RANK", "0")
samples = colour_samples(root / f"videos{{rank}}", 4, seconds=2, max_frames=4)
trainer = {{"accelerator": "cpu", "devices": 2, "strategy": "ddp", "max_steps": 4, "enable_progress_bar": False,
           "enable_model_summary": False, "logger": False, "limit_val_batches": 1, "num_sanity_val_steps": 0}}
losses = Losses()
result = fit(run_config(root / "runs", trainer=trainer), ListDataModule(samples, batch_size=2), callbacks=[losses])
(root / f"result{{rank}}.json").write_text(json.dumps({{**result, "losses": losses.values, "backend": losses.backend}}))
"""


def test_ddp_with_two_cpu_processes(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tests=str(TESTS), root=str(tmp_path))))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"result{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in results] == [2, 2]
    assert [r["backend"] for r in results] == ["gloo", "gloo"]
    assert [r["global_step"] for r in results] == [4, 4]
    assert all(r["losses"][-1] < r["losses"][0] for r in results)  # each rank's loss falls
    assert all(r["val/loss"] == pytest.approx(results[0]["val/loss"]) for r in results)  # synced across ranks
    assert Path(results[0]["checkpoint"]).is_file()
