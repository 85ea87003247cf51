"""dynvlm eval: a config without a data section, a multiple-choice file, results in their own folder;
training-free evaluation (another compressor or budget than the checkpoint's) and transfer sweeps."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tiny_vlm import ENCODER, LLM

from dynvlm.cli.main import main
from dynvlm.config import ConfigError, to_yaml
from dynvlm.data.synth import vocabulary
from dynvlm.evaluation.command import evaluate_cli
from dynvlm.evaluation.evaluate import same_setting, setting, setting_line, setting_slug
from dynvlm.model.checkpoint import CompressorWeightsError, read_checkpoint, stale_compressor_weights
from dynvlm.model.restore import restore
from dynvlm.model.video_llm import VideoLLM
from dynvlm.run import train
from dynvlm.run.sweep import COST_COLUMNS


@pytest.fixture(scope="module")
def mc_file(synth) -> Path:
    return synth / "test_mc.jsonl"


def config(tmp_path, compressor: str = "pool", name: str = "evalrun"):
    """Tiny inline CLIP + Qwen2 with ``compressor`` at 4 tokens per frame (36 visual tokens: 8 frames, the cap)."""
    return OmegaConf.create({
        "name": name,
        "output_dir": str(tmp_path / "runs"),
        "model": {
            "encoder": {"name": "clip", "config": dict(ENCODER)},
            "compressor": {"name": compressor},
            "llm": {"name": "hf", "config": dict(LLM), "vocabulary": vocabulary(max_duration=14, options=4)},
        },
        "budget": {"max_tokens": 36, "max_frames": 8, "tokens_per_frame": 4},
        "trainer": {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False},
    })


def fit(tmp_path, synth: Path, compressor: str) -> tuple[OmegaConf, str]:
    """Train every module of the tiny model with ``compressor`` for 2 steps; returns (config, last.ckpt)."""
    cfg = OmegaConf.merge(config(tmp_path, compressor, name=f"trained_{compressor}"), {
        "data": {"train": str(synth / "train.jsonl"), "batch_size": 4},
        "optim": {"lr": 0.02},  # large steps: the trained answers differ from the untrained ones
        "trainer": {"max_steps": 2, "limit_val_batches": 0, "num_sanity_val_steps": 0, "logger": False},
    })
    result = train.fit(cfg)
    assert result["global_step"] == 2
    return cfg, result["checkpoint"]


@pytest.fixture(scope="module")
def pool_ckpt(tmp_path_factory, synth):
    return fit(tmp_path_factory.mktemp("pool"), synth, "pool")


@pytest.fixture(scope="module")
def prune_ckpt(tmp_path_factory, synth):
    return fit(tmp_path_factory.mktemp("prune"), synth, "prune")


def categories(mc_file: Path) -> set[str]:
    return {json.loads(line)["category"] for line in mc_file.read_text().splitlines()}


def test_eval_without_data_section_writes_its_own_folder(tmp_path, mc_file):
    cfg = config(tmp_path)
    report = evaluate_cli(cfg, data=str(mc_file))
    folder = tmp_path / "runs" / "evalrun" / "eval" / "test_mc" / "pool@4_N36"  # file stem, then the setting
    assert report["written"] == str(folder)
    questions = len(mc_file.read_text().splitlines())
    saved = json.loads((folder / "eval.json").read_text())
    assert saved["questions"] == questions and 0.0 <= saved["accuracy"] <= 1.0
    assert saved["compressor"] == "pool" and saved["tokens_per_frame"] == 4
    assert set(saved["per_category"]) == categories(mc_file)
    assert saved["trained_with"] is None and saved["evaluated_with"]["label"] == "pool@4"
    assert len((folder / "predictions.jsonl").read_text().splitlines()) == questions
    assert not (tmp_path / "runs" / "evalrun" / "predictions.jsonl").exists()  # the run's own file is untouched
    md = (folder / "eval.md").read_text()
    assert "| **overall** |" in md and "weights from the config (no checkpoint), evaluated with pool@4" in md
    # the measured cost of the evaluated setting (the sweep's columns, measured on 2 test samples)
    assert set(saved["cost"]) == set(COST_COLUMNS)
    assert saved["cost"]["flops_prefill"] > 0 and saved["cost"]["kv_bytes"] > 0 and saved["cost"]["prefill_ms"] > 0
    assert saved["cost"]["flops_prefill"] >= saved["cost"]["flops_llm_prefill"] > 0
    assert "## Cost per test sample" in md and "| flops_prefill |" in md
    # planned and actual visual tokens per sample, from what the test step recorded: 8 frames x 4
    assert saved["used"]["planned_tokens"] == 32 and saved["used"]["actual_tokens"] == 32
    assert saved["used"]["samples"] == questions
    # another setting of the same file gets its own folder: the first evaluation is kept
    other = evaluate_cli(OmegaConf.merge(cfg, {"model": {"compressor": {"name": "tome"}},
                                               "budget": {"tokens_per_frame": 9}}), data=str(mc_file))
    assert other["written"] == str(folder.parent / "tome@9_N36")
    assert json.loads((folder / "eval.json").read_text())["compressor"] == "pool"
    assert json.loads((folder.parent / "tome@9_N36" / "eval.json").read_text())["compressor"] == "tome"


def test_eval_errors_name_what_is_missing(tmp_path):
    cfg = config(tmp_path)
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        evaluate_cli(cfg)
    with pytest.raises(ConfigError, match="--data 'nope.jsonl': no such file"):
        evaluate_cli(cfg, data="nope.jsonl")
    with pytest.raises(ConfigError, match="--checkpoint 'gone.ckpt': no such file"):
        evaluate_cli(OmegaConf.merge(cfg, {"data": {"test": "t.jsonl"}}), checkpoint="gone.ckpt")


def test_eval_at_the_trained_setting_matches_dynvlm_test(tmp_path, mc_file, pool_ckpt):
    cfg, ckpt = pool_ckpt
    report = evaluate_cli(cfg, checkpoint=ckpt, data=str(mc_file), out=str(tmp_path / "same"))
    assert report["setting"] == "trained and evaluated with pool@4"
    assert "- trained and evaluated with pool@4\n" in (tmp_path / "same" / "eval.md").read_text()
    assert report["used"]["tokens_per_frame"] == [4] and report["used"]["frames"] == 8  # 36 // 4 = 9, capped at 8
    # the weights loaded here are the ones Trainer.test(ckpt_path=...) loads: the same answers
    reference = train.test(OmegaConf.merge(cfg, {"data": {"test": str(mc_file)}}), checkpoint=ckpt,
                           predictions=tmp_path / "reference.jsonl")
    assert report["accuracy"] == pytest.approx(reference["test/acc"])
    ours = [json.loads(line)["pred"] for line in (tmp_path / "same" / "predictions.jsonl").read_text().splitlines()]
    theirs = [json.loads(line)["pred"] for line in (tmp_path / "reference.jsonl").read_text().splitlines()]
    assert ours == theirs
    # ... which are not the untrained weights' answers (so the comparison above sees the loading)
    untrained = evaluate_cli(OmegaConf.merge(cfg, {"name": "untrained"}), data=str(mc_file), out=str(tmp_path / "untrained"))
    assert untrained["trained_with"] is None
    # without a checkpoint the config's own weights are evaluated, not the trained ones
    fresh, _ = restore(cfg, None)
    trained, _ = restore(cfg, read_checkpoint(ckpt))
    assert not torch.equal(fresh.projector.net[0].weight, trained.projector.net[0].weight)


def test_cli_evaluates_a_pool_checkpoint_with_tome_at_another_budget(tmp_path, mc_file, pool_ckpt, capsys):
    cfg, ckpt = pool_ckpt
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    out = tmp_path / "tome"
    rc = main(["eval", str(path), "model.compressor.name=tome", "budget.tokens_per_frame=9",
               "--checkpoint", ckpt, "--data", str(mc_file), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    saved = json.loads((out / "eval.json").read_text())
    assert saved["trained_with"] == {"compressor": "pool", "tokens_per_frame": 4, "max_tokens": 36, "policy": "dynamic",
                                     "policy_keys": {}, "label": "pool@4"}
    assert saved["evaluated_with"] == {"compressor": "tome", "tokens_per_frame": 9, "max_tokens": 36, "policy": "dynamic",
                                       "policy_keys": {}, "label": "tome@9"}
    assert "- trained with pool@4, evaluated with tome@9\n" in (out / "eval.md").read_text()
    # what the model's budget plans actually used: 9 tokens per frame, 36 // 9 = 4 frames
    assert saved["used"]["tokens_per_frame"] == [9] and saved["used"]["frames"] == 4
    assert saved["used"]["visual_tokens"] == 36
    questions = len(mc_file.read_text().splitlines())
    assert saved["questions"] == questions and 0.0 <= saved["accuracy"] <= 1.0
    assert len((out / "predictions.jsonl").read_text().splitlines()) == questions
    assert saved["dropped_weights"] == []


def test_a_pool_checkpoint_cannot_be_evaluated_with_prune(tmp_path, mc_file, pool_ckpt, capsys):
    cfg, ckpt = pool_ckpt
    pruned = OmegaConf.merge(cfg, {"model": {"compressor": {"name": "prune"}}})
    out = tmp_path / "prune"
    with pytest.raises(CompressorWeightsError, match=r"compressor 'prune' has 4 parameter tensors \(compressor\.scorer\.0\.weight"
                                                     r".*does not hold: it was trained with 'pool'.*--checkpoint trained with 'prune'"):
        evaluate_cli(pruned, checkpoint=ckpt, data=str(mc_file), out=str(out))
    assert not (out / "eval.json").exists()
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    assert main(["eval", str(path), "model.compressor.name=prune", "--checkpoint", ckpt, "--data", str(mc_file)]) == 2
    err = capsys.readouterr().err
    assert "dynvlm: error: compressor 'prune'" in err and ckpt in err and "compressor.scorer" in err


def test_a_prune_checkpoint_evaluated_with_pool_drops_only_the_scorer(tmp_path, mc_file, prune_ckpt, pool_ckpt):
    _, ckpt = prune_ckpt
    pool_cfg, _ = pool_ckpt
    with pytest.warns(UserWarning, match=r"trained with compressor 'prune': its 4 weights .* not used by 'pool' and were dropped"):
        report = evaluate_cli(pool_cfg, checkpoint=ckpt, data=str(mc_file), out=str(tmp_path / "pool"))
    assert report["setting"] == "trained with prune@4, evaluated with pool@4"
    assert sorted(report["dropped_weights"]) == ["compressor.scorer.0.bias", "compressor.scorer.0.weight",
                                                 "compressor.scorer.2.bias", "compressor.scorer.2.weight"]
    assert report["used"]["tokens_per_frame"] == [4] and 0.0 <= report["accuracy"] <= 1.0
    assert "4 weights of the trained compressor (prune) were not used" in (tmp_path / "pool" / "eval.md").read_text()

    # narrowly: any other weight the model lacks still fails the load
    data = torch.load(ckpt, weights_only=False)
    data["state_dict"]["projector.extra"] = torch.zeros(1)
    model = VideoLLM(pool_cfg)
    with pytest.warns(UserWarning, match="dropped"), pytest.raises(ValueError, match=r"holds 1 weights this model does not have.*projector\.extra"):
        model.on_load_checkpoint(data)
    # and resuming *training* with a swapped compressor is refused
    with pytest.raises(ConfigError, match="resuming training with 'pool' is not supported"):
        stale_compressor_weights(data, {"name": "pool"}, model.compressor, fitting=True)


def transfer_config(cfg, compressors):
    return OmegaConf.merge(cfg, {"sweep": {"model.compressor.name": list(compressors)}})


def test_transfer_sweep_writes_one_row_per_compressor(tmp_path, mc_file, pool_ckpt):
    cfg, ckpt = pool_ckpt
    logged = OmegaConf.merge(cfg, {"trainer": {"logger": True}})  # the trained run's config logs; its evaluations do not
    result = evaluate_cli(transfer_config(logged, ["pool", "tome"]), checkpoint=ckpt, data=str(mc_file))
    folder = Path(ckpt).parent.parent / "transfer"  # beside the evaluated model
    assert result["results"] == str(folder / "results.csv") and result["points"] == 2
    with open(folder / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["compressor"] for r in rows] == ["pool", "tome"]
    questions = len(mc_file.read_text().splitlines())
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0 and int(r["questions"]) == questions
        assert set(COST_COLUMNS) <= set(r) and float(r["flops_prefill"]) > 0 and float(r["kv_bytes"]) > 0
        assert float(r["test_tokens_planned"]) == 32 and float(r["test_tokens_actual"]) > 0
        saved = json.loads((folder / "points" / r["point"] / "eval.json").read_text())
        # the ceiling the model logged from the frames it kept, not the N_max // M derivation
        assert saved["ceilings"] and float(r["ceiling"]) == round(saved["ceilings"]["ceiling"], 4)
        assert (r["trained_setting"] == "True") == (r["compressor"] == "pool")
        assert r["used_tokens_per_frame"] == "4" and r["trained_with"] == "pool@4"
        assert {f"acc/{c}" for c in categories(mc_file)} <= set(r)
        assert json.loads((folder / "points" / r["point"] / "eval.json").read_text())["evaluated_with"]["compressor"] == r["compressor"]
    md = (folder / "results.md").read_text()
    assert "- trained with pool@4" in md
    assert "| pool * | 4 |" in md and "| tome | 4 |" in md
    assert not (folder.parent / "logs").exists()  # no CSV log version per evaluated point in the trained run


def test_transfer_checks_every_compressor_before_evaluating(tmp_path, mc_file, pool_ckpt):
    cfg, ckpt = pool_ckpt
    out = tmp_path / "transfer"
    with pytest.raises(CompressorWeightsError, match="compressor 'prune'"):
        evaluate_cli(transfer_config(cfg, ["tome", "prune"]), checkpoint=ckpt, data=str(mc_file), out=str(out))
    assert not (out / "results.csv").exists() and not (out / "points").exists()  # tome was not evaluated first


def test_transfer_without_a_trained_model_says_how_to_train_it(tmp_path, mc_file):
    base = tmp_path / "train.yaml"
    base.write_text(to_yaml(config(tmp_path)))
    sweep = tmp_path / "transfer.yaml"
    sweep.write_text("base: train.yaml\nsweep:\n  model.compressor.name: [pool, tome]\n")
    with pytest.raises(ConfigError, match=rf"checkpoints/last.ckpt does not exist. Train the model first \(dynvlm fit {base}\)"):
        evaluate_cli(transfer_config(config(tmp_path), ["pool", "tome"]), data=str(mc_file), config_path=str(sweep))


def test_the_lmms_bridge_follows_the_same_rule(pool_ckpt):
    from dynvlm.lmms.loading import CheckpointError, load_checkpoint

    _, ckpt = pool_ckpt
    with pytest.raises(CheckpointError, match=r"compressor 'prune' has 4 parameter tensors .*trained with 'pool'"):
        load_checkpoint(ckpt, compressor="prune")
    assert type(load_checkpoint(ckpt, compressor="tome").compressor).__name__ == "ToMe"


def test_setting_labels_name_the_budget():
    def cfg(name, **budget):
        return {"model": {"compressor": {"name": name}}, "budget": budget}

    pool100, tome36 = setting(cfg("pool", tokens_per_frame=100)), setting(cfg("tome", tokens_per_frame=36))
    assert setting_line(pool100, tome36) == "trained with pool@100, evaluated with tome@36"
    assert setting_line(pool100, setting(cfg("pool", tokens_per_frame=100))) == "trained and evaluated with pool@100"
    dynamic = setting(cfg("pool", tokens_per_frame=None, max_tokens=6000))
    assert dynamic["label"] == "pool@dynamic" and dynamic["max_tokens"] == 6000
    assert setting_line(setting(cfg("pool")), dynamic) == (
        "trained with pool@dynamic (N_max=12000), evaluated with pool@dynamic (N_max=6000)")
    assert setting(cfg("tome", tokens_per_frame=16, policy={"name": "keyframes"}))["label"] == "tome@16 (keyframes)"
    assert setting(cfg("tome", unknown_old_key=1))["label"] == "tome@dynamic"  # an older checkpoint's config
    assert setting_line(None, tome36) == "weights from the config (no checkpoint), evaluated with tome@36"


def test_setting_labels_read_the_budget_of_policy_keys():
    def cfg(name, policy, **budget):
        return {"model": {"compressor": {"name": name}}, "budget": {"tokens_per_frame": None, "policy": policy, **budget}}

    fixed36 = setting(cfg("tome", {"name": "fixed", "tokens_per_frame": 36}))
    fixed100 = setting(cfg("tome", {"name": "fixed", "tokens_per_frame": 100}))
    assert fixed36["label"] == "tome@36 (fixed)" and fixed36["policy_keys"] == {"tokens_per_frame": 36}
    assert setting_line(fixed36, fixed100) == "trained with tome@36 (fixed), evaluated with tome@100 (fixed)"
    t8, t32 = setting(cfg("pool", {"name": "frames", "frames": 8})), setting(cfg("pool", {"name": "frames", "frames": 32}))
    assert t8["label"] == "pool@T=8 (frames)"
    assert setting_line(t8, t32) == "trained with pool@T=8 (frames), evaluated with pool@T=32 (frames)"
    assert setting_line(t8, setting(cfg("pool", {"name": "frames", "frames": 8}))) == "trained and evaluated with pool@T=8 (frames)"
    # the whole setting is compared: another N_max or another policy key is not "the same"
    assert not same_setting(t8, setting(cfg("pool", {"name": "frames", "frames": 8}, max_tokens=64)))
    assert same_setting(t8, setting(cfg("pool", {"name": "frames", "frames": 8}))) and not same_setting(None, t8)
    other = setting(cfg("pool", {"name": "frames", "frames": 8, "stride": 2}))
    assert other["label"] == t8["label"] and not same_setting(t8, other)
    assert setting_line(t8, other) == ('trained with pool@T=8 (frames) {"frames": 8}, '
                                       'evaluated with pool@T=8 (frames) {"frames": 8, "stride": 2}')
    # folder names differ where the settings do, and are path-safe
    assert setting_slug(fixed36) == "tome@36_fixed_N12000" and setting_slug(t8) != setting_slug(t32)
    assert "/" not in setting_slug(t8) and " " not in setting_slug(t8)


def test_benchmark_files_are_scored_as_their_tasks_with_unreadable_videos_counted(tmp_path, mc_file):
    """A VideoMME- and an MLVU-shaped file: generated answers (eval.mode auto), the task's metric (MLVU: the
    mean over its seven task types), and a question whose video is missing counted wrong and listed with its file."""
    rows = [json.loads(x) for x in mc_file.read_text().splitlines()]
    videomme = [{"videoID": r["video"].removesuffix(".mp4"), "question_id": r["question_id"], "question": r["question"],
                 "options": [f"{k}. {o}" for k, o in zip("ABCD", r["options"])], "answer": r["answer"], "duration": "short",
                 "domain": "Knowledge", "sub_category": "Astronomy", "task_type": "Counting Problem"} for r in rows]
    videomme.append({**videomme[0], "videoID": "videos/test/ghost", "question_id": "ghost"})
    mlvu = [{"video_name": r["video"], "question": r["question"] + "".join(f"\n({k}) {o}" for k, o in zip("ABCD", r["options"])),
             "answer": r["answer"], "task_type": ("count", "order")[i % 2], "duration": 900.0} for i, r in enumerate(rows)]
    mlvu.append({**mlvu[0], "video_name": "videos/test/ghost.mp4"})
    cfg = config(tmp_path)
    for name, records in (("videomme", videomme), ("mlvu", mlvu)):
        path = mc_file.parent / f"{name}_bench.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        report = evaluate_cli(cfg, data=str(path), out=str(tmp_path / name))
        saved = json.loads((tmp_path / name / "eval.json").read_text())
        assert saved["mode"] == "generate" and saved["reading"] == "task" and saved["benchmark"]["name"] == name
        ghost = str(mc_file.parent / "videos" / "test" / "ghost.mp4")
        assert saved["unreadable"] == [{"question_id": records[-1].get("question_id", f"{path}:{len(records)}"),
                                        "file": ghost, "reason": "no such file"}]
        preds = [json.loads(x) for x in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
        assert saved["questions"] == len(records) == len(preds) and preds[-1]["pred"] == -1
        assert preds[-1]["unreadable"] == ghost and all("letter" in p for p in preds)
        right = [p["pred"] == p["answer"] for p in preds]
        assert report["accuracy"] == pytest.approx(sum(right) / len(records))  # the ghost is in the denominator
        if name == "videomme":
            assert saved["benchmark"]["score"] == pytest.approx(100 * saved["accuracy"])
        else:  # mean over the seven task types, the five without questions counting 0
            per_type = [sum(k for k, p in zip(right, preds) if p["group"] == t) / sum(p["group"] == t for p in preds)
                        for t in ("count", "order")]
            assert saved["benchmark"]["score"] == pytest.approx(100 * sum(per_type) / 7)
        md = (tmp_path / name / "eval.md").read_text()
        assert "## Unreadable (1 questions, counted wrong)" in md and ghost in md


def test_a_bf16_encoder_and_llm_evaluate_with_their_cost(tmp_path, mc_file):
    """The 7B recipe's dtypes and precision (encoder and LLM loaded in bf16, projector fp32, bf16-mixed): the test
    loop ran (autocast) and the cost measurement after it crashed ('mat1 and mat2 must have the same dtype').
    It now measures under the same autocast. (32-true, where the test loop itself crashed: tests/test_model.py.)"""
    from dynvlm.run.sweep import point_cost
    from dynvlm.util.configs import config_dict

    cfg = OmegaConf.merge(config(tmp_path, name="bf16"),
                          {"model": {"encoder": {"dtype": "bfloat16"}, "llm": {"dtype": "bfloat16"}},
                           "trainer": {"precision": "bf16-mixed"}})
    report = evaluate_cli(cfg, data=str(mc_file), out=str(tmp_path / "eval"))
    assert report["questions"] == len(mc_file.read_text().splitlines()) and 0.0 <= report["accuracy"] <= 1.0
    cost = json.loads((tmp_path / "eval" / "eval.json").read_text())["cost"]
    assert set(cost) == set(COST_COLUMNS)
    assert all(cost[k] > 0 for k in ("flops_prefill", "prefill_ms", "kv_bytes", "peak_mem_bytes")), cost
    # the FLOPs and positions of the all-fp32 model on the same samples; the KV cache is the bf16 LLM's, half its size
    fp32 = point_cost(restore(config(tmp_path), None)[0], {**config_dict(config(tmp_path)), "data": {"test": str(mc_file)}})
    for key in ("flops_encoder", "flops_projector", "flops_llm_prefill", "flops_prefill", "prompt_tokens"):
        assert cost[key] == fp32[key], key
    assert cost["kv_bytes"] == fp32["kv_bytes"] // 2


def test_a_precision_the_cost_cannot_be_measured_in_is_refused_before_the_test_loop(tmp_path, mc_file):
    cfg = OmegaConf.merge(config(tmp_path), {"trainer": {"precision": "transformer-engine"}})
    with pytest.raises(ConfigError, match=r"trainer\.precision: 'transformer-engine' cannot be reproduced.*valid: bf16-mixed"):
        evaluate_cli(cfg, data=str(mc_file), out=str(tmp_path / "eval"))
    assert not (tmp_path / "eval" / "predictions.jsonl").exists()
