"""The sweep runner end to end: two points on real synthetic videos, a crash mid-way, a re-run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from tiny_vlm import ENCODER, LLM

from dynvlm.config import apply_point, load_config
from dynvlm.data.synth import vocabulary
from dynvlm.run import sweep
from dynvlm.run.sweep import findings, point_slug, run
from dynvlm.util.configs import config_dict
from dynvlm.util.tables import read_csv_rows, write_csv_rows

SYNTH = dict(seed=0, train=4, val=0, test=3, size=16, min_duration=12, max_duration=14, max_visits=2, max_visit_seconds=3)


class Crash(pl.Callback):
    """Crashes the fit of the point whose run folder contains ``slug`` at ``step``."""

    def __init__(self, slug: str, step: int) -> None:
        self.slug, self.step = slug, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.slug in trainer.default_root_dir and trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


class CountFits(pl.Callback):
    def __init__(self) -> None:
        self.fits: list[tuple[str, int]] = []

    def on_train_start(self, trainer, pl_module):
        self.fits.append((Path(trainer.default_root_dir).name, trainer.global_step))


def sweep_file(tmp_path: Path) -> Path:
    cfg = {
        "name": "mini",
        "seed": 0,
        "output_dir": str(tmp_path / "runs"),
        "model": {
            "encoder": {"name": "clip", "config": dict(ENCODER)},
            "compressor": {"name": "pool"},
            "llm": {"name": "hf", "config": dict(LLM), "vocabulary": vocabulary(max_duration=14, options=4)},
        },
        "budget": {"max_tokens": 64, "max_frames": 6, "tokens_per_frame": 4},
        "data": {"synth": {"out": str(tmp_path / "synth"), **SYNTH}, "batch_size": 2},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "stage": {"name": "video_sft", "checkpoint_every_n_steps": 1},
        "trainer": {"accelerator": "cpu", "max_steps": 4, "enable_progress_bar": False, "enable_model_summary": False,
                    "num_sanity_val_steps": 0, "limit_val_batches": 0, "log_every_n_steps": 1},
        "sweep": {"budget.tokens_per_frame": [1, 4]},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_interrupted_sweep_resumes_without_rerunning_points(tmp_path, monkeypatch):
    cfg = load_config(sweep_file(tmp_path))

    def no_second_model(data, checkpoint):
        raise AssertionError("every point here trains: its cost must come from the fitted model (CostProbe)")

    monkeypatch.setattr(sweep, "checkpoint_cost", no_second_model)
    second = point_slug({"budget.tokens_per_frame": 4})
    counter = CountFits()
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg, callbacks=[counter, Crash(second, step=2)])
    out = tmp_path / "runs" / "mini"
    rows = read_csv_rows(out / "results.csv")
    assert [r["point"] for r in rows] == [point_slug({"budget.tokens_per_frame": 1})]
    assert counter.fits == [("tokens_per_frame=1", 0), ("tokens_per_frame=4", 0)]

    counter = CountFits()
    summary = run(cfg, callbacks=[counter])
    assert summary["ran"] == 1 and summary["points"] == 2
    assert counter.fits == [("tokens_per_frame=4", 2)]  # resumed at its last checkpoint, point 1 not rerun
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["point"] for r in rows] == ["tokens_per_frame=1", "tokens_per_frame=4"]
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0
        assert r["global_step"] == "4" and float(r["step_time_s"]) > 0 and float(r["peak_memory_mb"]) > 0
        assert "compressor/pool" in r["plugins"]
        assert r["budget_policy"] == "dynamic" and float(r["test_tokens_planned"]) > 0
        # the ceiling from the frames the model kept == the one derived from the budget alone (square M)
        point_cfg = apply_point({k: v for k, v in config_dict(cfg).items() if k != "sweep"},
                                {"budget.tokens_per_frame": int(r["tokens_per_frame"])})
        assert float(r["ceiling"]) == pytest.approx(sweep.test_ceilings(point_cfg)["ceiling"], abs=1e-3)
        preds = [json.loads(line) for line in open(out / "points" / r["point"] / "predictions.jsonl")]
        assert float(r["ceiling"]) == pytest.approx(sum(p["ceiling"] for p in preds) / len(preds), abs=1e-4)
        assert r["test_tokens_planned"] == r["test_tokens_actual"]  # exact accounting, recorded per point
        # measured cost of the fitted point on its first test samples
        parts = [float(r[f"flops_{k}"]) for k in ("encoder", "compressor", "projector", "llm_prefill")]
        assert parts[0] > 0 and parts[2] > 0 and parts[3] > 0 and parts[1] == 0  # pool: no matmuls
        assert float(r["flops_prefill"]) == pytest.approx(sum(parts))
        assert float(r["prefill_ms"]) > 0 and int(float(r["kv_bytes"])) > 0 and int(float(r["peak_mem_bytes"])) > 0
        assert float(r["prompt_tokens"]) > 0
    # more visual tokens per frame: more projector and LLM FLOPs and KV bytes, same frames encoded or fewer
    m1, m4 = rows
    assert float(m4["flops_projector"]) > float(m1["flops_projector"])
    assert float(m4["flops_llm_prefill"]) > float(m1["flops_llm_prefill"])
    assert float(m4["kv_bytes"]) > float(m1["kv_bytes"])
    ckpt = out / "points" / "tokens_per_frame=4" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 4
    md = (out / "results.md").read_text()
    assert "| pool |" in md and "M=1" in md and "M=4" in md
    assert (out / "accuracy_vs_tokens.png").stat().st_size > 1000
    assert (out / "accuracy_vs_prefill_flops.png").stat().st_size > 1000
    assert "## Cost" in md and "accuracy_vs_prefill_flops.png" in md and "| pool | 4 |" in md

    counter = CountFits()
    assert run(cfg, callbacks=[counter])["ran"] == 0 and counter.fits == []

    # a point whose fit had already finished (no training, so no in-fit measurement) is measured
    # from its checkpoint: the same counts as the in-fit measurement
    monkeypatch.undo()
    data = apply_point({k: v for k, v in config_dict(cfg).items() if k != "sweep"}, {"budget.tokens_per_frame": 4})
    data["name"] = "mini/points/tokens_per_frame=4"
    cost = sweep.checkpoint_cost(data, str(ckpt))
    for key in ("flops_encoder", "flops_projector", "flops_llm_prefill", "kv_bytes", "prompt_tokens"):
        assert float(cost[key]) == pytest.approx(float(rows[1][key])), key


def test_results_csv_is_replaced_atomically(tmp_path):
    path = tmp_path / "results.csv"
    write_csv_rows(path, [{"point": "a", "accuracy": 0.5}])
    write_csv_rows(path, [{"point": "a", "accuracy": 0.5}, {"point": "b", "accuracy": 0.7, "extra": 1}])
    assert [r["point"] for r in read_csv_rows(path)] == ["a", "b"]
    assert read_csv_rows(path)[0]["extra"] == ""
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind


def test_findings_compare_gap_to_seed_noise():
    cells = {("pool", 1): [0.40, 0.42], ("pool", 4): [0.70, 0.71], ("pool", 16): [0.60, 0.61], ("tome", 4): [0.50, 0.50]}
    text = "\n".join(findings(cells))
    assert "gap 29.5 points" in text and "is more than twice" in text
    assert "pool: accuracy peaks at a middle tokens per frame (M=4)" in text
    assert "M=4: compressors differ by 20.5 points (pool − tome), beyond seed noise" in text
    single = "\n".join(findings({("pool", 1): [0.4], ("pool", 4): [0.5]}))
    assert "seed noise is not measured" in single
    noisy = "\n".join(findings({("pool", 1): [0.40, 0.46], ("pool", 4): [0.47, 0.49], ("pool", 16): [0.44, 0.45]}))
    assert "pool: highest at M=4, but no peak can be claimed (3.5 points above the ends, within twice the seed spread)" in noisy


def _row(point: str, policy: str, seed: int, acc: float, m: object = "", mean_m: object = "", **extra) -> dict:
    """A results.csv row as read back (strings where the CSV writes them), with a prefill cost."""
    return {"point": point, "compressor": "pool", "budget_policy": policy, "seed": seed, "accuracy": acc,
            "tokens_per_frame": m, "mean_tokens_per_frame": mean_m, "flops_prefill": 1e6 * (1 + acc),
            "ceiling": 0.9, **extra}


def test_summary_keeps_policies_and_swept_keys_apart(tmp_path):
    rows = [
        # dynamic with a configured M: the default format, seeds pooled
        _row("a0", "dynamic", 0, 0.40, m=4), _row("a1", "dynamic", 1, 0.50, m=4),
        # the fixed policy's own M (budget.policy.tokens_per_frame), budget.tokens_per_frame unset
        _row("b0", "fixed", 0, 0.60, **{"budget.policy.tokens_per_frame": 4}),
        # frames and dynamic without M: the measured mean, rounded
        _row("c0", "frames", 0, 0.70, mean_m=15.6), _row("d0", "dynamic", 0, 0.30, mean_m=36.2),
        # another swept key: its points must not pool with the lr=0.01 ones as if they were seeds
        _row("e0", "dynamic", 0, 0.10, m=16, **{"optim.lr": 0.01}), _row("e1", "dynamic", 1, 0.20, m=16, **{"optim.lr": 0.01}),
        _row("f0", "dynamic", 0, 0.90, m=16, **{"optim.lr": 0.001}),
    ]
    keys = ["model.compressor.name", "budget.tokens_per_frame", "budget.policy", "optim.lr", "seed"]
    for r in rows[:5]:
        r["optim.lr"] = 0.01
    for r in rows:
        r["budget.policy"] = r["budget_policy"]
    cells = sweep._cells(rows, keys)
    assert cells == {
        ("pool optim.lr=0.01", 4): [0.40, 0.50],
        ("pool (fixed) optim.lr=0.01", 4): [0.60],
        ("pool (frames) optim.lr=0.01", 16): [0.70],
        ("pool optim.lr=0.01", 16): [0.10, 0.20],
        ("pool optim.lr=0.001", 16): [0.90],
    }
    sweep.write_summary(tmp_path, rows, keys)
    text = (tmp_path / "results.md").read_text()
    assert "| pool (frames) optim.lr=0.01 | — | 70.0 |" in text  # columns M=4, 16: no M=36 for the dynamic row
    assert "| pool optim.lr=0.01 | 45.0 ± 5.0 | 15.0 ± 5.0 |" in text
    # the dynamic row (no fixed M) in a table of its own, beside the fixed M of its compressor and lr
    assert "| pool optim.lr=0.01 | dynamic | 36.2 | 30.0 |" in text and "| pool (fixed) optim.lr=0.01 | M=4 |" in text
    assert "| pool (fixed) optim.lr=0.01 | 4 |" in text and "| pool optim.lr=0.001 | 16 |" in text  # cost table
    assert "| 16 (frames) |" in text and "| 4 (fixed) |" in text  # ceiling rows per policy and M
    assert (tmp_path / "accuracy_vs_tokens.png").is_file() and (tmp_path / "accuracy_vs_prefill_flops.png").is_file()


def test_summary_default_labels_are_the_compressor():
    rows = [_row("a0", "dynamic", 0, 0.4, m=1), _row("a1", "dynamic", 1, 0.6, m=1), _row("b0", "frames", 0, 0.5, mean_m=1)]
    keys = ["model.compressor.name", "budget.tokens_per_frame", "seed"]
    cells = sweep._cells(rows, keys)
    # two policies at the same M stay two cells: the frames point is not averaged in as a seed
    assert cells == {("pool", 1): [0.4, 0.6], ("pool (frames)", 1): [0.5]}
    text = sweep.sweep_markdown(rows, cells, keys)
    assert "| pool | 50.0 ± 10.0 |" in text and "| pool (frames) | 50.0 |" in text and "M=1" in text


def test_peaks_are_judged_by_their_own_seeds():
    # prune's noise (10 points) must not veto pool's peak (2.0 points above the ends, spread 0.5)
    cells = {("pool", 1): [0.700, 0.705], ("pool", 16): [0.720, 0.725], ("pool", 64): [0.695, 0.700],
             ("prune", 1): [0.40, 0.50], ("prune", 16): [0.55, 0.60], ("prune", 64): [0.50, 0.55]}
    text = "\n".join(findings(cells))
    assert "pool: accuracy peaks at a middle tokens per frame (M=16): 2.0 points above both ends" in text
    assert "prune: highest at M=16, but no peak can be claimed" in text
    assert "M=1: compressors differ by 25.2 points (pool − prune), beyond seed noise (their larger seed spread 10.0)" in text


def test_dynamic_rows_are_compared_with_every_fixed_m_per_clip_length(tmp_path):
    def row(point, seed, acc, m="", policy="fixed", short=0.0, long=0.0, mean_m=""):
        return dict(_row(point, policy, seed, acc, m=m, mean_m=mean_m or m),
                    **{"budget.policy": policy, "acc_len/8s": short, "acc_len/28-32s": long})

    rows = [row("f4s0", 0, 0.80, 4, short=0.70, long=0.90), row("f4s1", 1, 0.81, 4, short=0.71, long=0.91),
            row("f16s0", 0, 0.78, 16, short=0.90, long=0.66), row("f16s1", 1, 0.78, 16, short=0.90, long=0.66),
            row("d0", 0, 0.90, policy="dynamic", short=0.90, long=0.90, mean_m=10.0),
            row("d1", 1, 0.89, policy="dynamic", short=0.89, long=0.89, mean_m=10.0)]
    keys = ["model.compressor.name", "budget.policy", "budget.tokens_per_frame", "seed"]
    text = sweep.sweep_markdown(rows, sweep._cells(rows, keys), keys)
    assert "| setting | budget | mean M | all clips | 8s clips | 28-32s clips |" in text
    assert "| pool | dynamic | 10.0 | 89.5 ± 0.5 | 89.5 ± 0.5 | 89.5 ± 0.5 |" in text
    assert "| pool (fixed) | M=4 | 4.0 | 80.5 ± 0.5 | 70.5 ± 0.5 | 90.5 ± 0.5 |" in text
    assert ("pool: dynamic 89.5 % against the best fixed M=4 (80.5 %): +9.0 points (larger seed spread of the two 1.0); "
            "above every fixed M") in text
    assert "| pool | M=" not in text.split("## Dynamic")[0]  # the main table holds fixed rows only
    rows[-1]["accuracy"] = 0.70  # a seed far off: the spread (20 points) now swallows the gain
    text = sweep.sweep_markdown(rows, sweep._cells(rows, keys), keys)
    assert "not above M=4, M=16 by more than twice" in text


def test_each_family_reports_its_best_m():
    rows = [_row("a", "fixed", 0, 0.6, m=1, **{"acc/perception": 0.3, "acc/presence": 0.9}),
            _row("b", "fixed", 0, 0.7, m=16, **{"acc/perception": 0.8, "acc/presence": 0.6}),
            _row("c", "dynamic", 0, 0.9, mean_m=10, **{"acc/perception": 0.99, "acc/presence": 0.99})]  # apart
    assert sweep.family_bests(rows, ["model.compressor.name", "budget.tokens_per_frame"]) == [
        "- pool (fixed): best per family: perception 80.0 % at M=16, presence 90.0 % at M=1."]


def test_a_bf16_point_is_measured_as_its_test_ran(tmp_path):
    """The cost of a point measured from its checkpoint (a finished point re-run) with the 7B recipe's dtypes and
    precision (encoder and LLM loaded in bf16, projector fp32, bf16-mixed) crashed: the restored model ran
    outside autocast. It is now measured as dynvlm test runs the point: fp32 master weights under bf16 autocast."""
    from dynvlm.config import ConfigError
    from dynvlm.data.synth import generate

    generate({"out": str(tmp_path / "synth"), **SYNTH, "train": 0, "test": 1}, progress=False)
    data = {k: v for k, v in config_dict(load_config(sweep_file(tmp_path))).items() if k != "sweep"}
    data["data"] = {"test": str(tmp_path / "synth" / "test_mc.jsonl")}
    fp32 = sweep.checkpoint_cost(data, None)
    data["model"]["encoder"]["dtype"] = data["model"]["llm"]["dtype"] = "bfloat16"
    data["trainer"]["precision"] = "bf16-mixed"
    mixed = sweep.checkpoint_cost(data, None)
    for key in ("flops_encoder", "flops_projector", "flops_llm_prefill", "flops_prefill", "prompt_tokens", "kv_bytes"):
        assert mixed[key] == fp32[key] > 0, key  # prepared as dynvlm test prepares it: fp32 weights, so fp32 KV bytes
    assert mixed["prefill_ms"] > 0 and mixed["peak_mem_bytes"] > 0
    # a precision the cost cannot be measured in stops the sweep before the point's fit, not after it
    data["trainer"]["precision"] = "transformer-engine"
    with pytest.raises(ConfigError, match=r"trainer\.precision: 'transformer-engine'.*valid: bf16-mixed"):
        sweep.CostProbe(data)
