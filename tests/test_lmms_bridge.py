"""lmms-eval bridge: ``lmms-eval --model dynvlm`` on a tiny trained checkpoint equals ``dynvlm eval``.

lmms-eval lives in its own environment (``.venv-lmms``, made by scripts/setup_lmms.sh on first
use: about 2-8 minutes once, then a no-op); everything that imports it runs there as a
subprocess, offline, with ``HF_HOME`` in a temp dir. lmms-eval exits 0 when evaluation raises,
so the tests read its results files and never trust the exit code.

Set ``DYNVLM_SKIP_LMMS=1`` to skip the tests that need that environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_vlm import COLOURS, QUESTION, ListDataModule, colour_mc_file, colour_samples, run_config, write_video

ROOT = Path(__file__).resolve().parents[1]
LMMS_ENV = ROOT / ".venv-lmms"
TASKS = ROOT / "experiments" / "lmms_tasks"
NAMES = list(COLOURS)


# ---------------------------------------------------------------------------------------------
# main environment: entry point, loading, overrides


def test_entry_point_is_declared_and_light():
    """The ``lmms_eval.models`` entry point names a module that imports neither torch nor lmms-eval."""
    from importlib.metadata import entry_points

    eps = {e.name: e.value for e in entry_points(group="lmms_eval.models")}
    assert eps.get("dynvlm") == "dynvlm.lmms:MANIFEST"
    code = "import sys, dynvlm.lmms as m; assert callable(m.MANIFEST); print(sorted(k for k in ('torch', 'lmms_eval') if k in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny dynvlm run trained for a few steps on the colour task: ``(config dict, checkpoint path)``."""
    from dynvlm.run.train import fit

    root = tmp_path_factory.mktemp("lmms_run")
    trainer = {"accelerator": "cpu", "devices": 1, "max_steps": 12, "enable_progress_bar": False,
               "enable_model_summary": False, "log_every_n_steps": 1, "num_sanity_val_steps": 0, "limit_val_batches": 0}
    cfg = run_config(root / "runs", trainer=trainer, data={"eval_batch_size": 1})
    result = fit(cfg, ListDataModule(colour_samples(root / "train", 6), batch_size=6))
    return cfg, result["checkpoint"]


def test_broken_checkpoint_path_fails_at_load_naming_it(tmp_path):
    from dynvlm.lmms.loading import CheckpointError, load_checkpoint

    missing = tmp_path / "nope" / "last.ckpt"
    with pytest.raises(CheckpointError, match=str(missing)):
        load_checkpoint(missing)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(garbage)):
        load_checkpoint(garbage)


def test_overrides_change_budget_and_compressor_not_weights(trained):
    import torch

    from dynvlm.lmms.loading import load_checkpoint

    cfg, ckpt = trained
    base = load_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    torch.testing.assert_close(base.state_dict()["projector.net.0.weight"], saved["projector.net.0.weight"])
    small = load_checkpoint(ckpt, compressor="tome", tokens_per_frame=9, max_frames=3, fps=2.0)
    assert type(small.compressor).__name__ != type(base.compressor).__name__
    assert small.hparams["config"]["model"]["compressor"] == {"name": "tome"}
    assert small.hparams["config"]["budget"]["fps"] == 2.0
    plan = small.budget.plan_batch([8])[0]
    assert plan.tokens == 9 and len(plan.indices) == 3
    assert base.budget.plan_batch([8])[0].tokens == 8  # max_tokens 64 over 8 frames, a pooled 2x4 grid
    torch.testing.assert_close(small.state_dict()["llm.model.lm_head.weight"], saved["llm.model.lm_head.weight"])
    dotted = load_checkpoint(ckpt, overrides={"budget.max_tokens": 32})
    assert dotted.hparams["config"]["budget"]["max_tokens"] == 32


def test_model_args_take_a_config_with_or_without_a_checkpoint(trained, tmp_path):
    """``config=`` builds the evaluated setting as ``dynvlm eval CONFIG`` does: alone, the config's own
    weights; with ``checkpoint=``, the checkpoint's weights in the config's model (another compressor)."""
    import torch
    import yaml

    from dynvlm.lmms.loading import CheckpointError, load_model

    cfg, ckpt = trained
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({**cfg, "model": {**cfg["model"], "compressor": {"name": "tome"}}}))
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    own = load_model(config=path)
    assert own.hparams["config"]["model"]["compressor"] == {"name": "tome"}
    assert not torch.equal(own.state_dict()["projector.net.0.weight"], saved["projector.net.0.weight"])
    both = load_model(ckpt, config=path, tokens_per_frame=4)
    assert type(both.compressor).__name__ == type(own.compressor).__name__ and both.budget.cfg.tokens_per_frame == 4
    torch.testing.assert_close(both.state_dict()["projector.net.0.weight"], saved["projector.net.0.weight"])
    with pytest.raises(CheckpointError, match="checkpoint=PATH, config=PATH, or both"):
        load_model()
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(config=tmp_path / "missing.yaml")


# ---------------------------------------------------------------------------------------------
# lmms-eval environment


@pytest.fixture(scope="session")
def lmms_python():
    """``.venv-lmms/bin/python`` with lmms-eval 0.7.3 and dynvlm (created by scripts/setup_lmms.sh if absent)."""
    if os.environ.get("DYNVLM_SKIP_LMMS"):
        pytest.skip("DYNVLM_SKIP_LMMS is set")
    run = subprocess.run(["bash", str(ROOT / "scripts" / "setup_lmms.sh")], capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, f"scripts/setup_lmms.sh failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
    return str(LMMS_ENV / "bin" / "python")


def _dynvlm_eval(cfg: dict, ckpt: str, data: Path, out: Path, **sections) -> tuple[float, dict[str, int]]:
    """``dynvlm eval`` (in process): accuracy and per-question predictions."""
    from omegaconf import OmegaConf

    from dynvlm.evaluation.command import evaluate_cli

    conf = OmegaConf.create({**cfg, **sections})
    report = evaluate_cli(conf, checkpoint=ckpt, data=str(data), out=str(out))
    preds = Path(report["written"]) / "predictions.jsonl"  # beside eval.json, not the run's own file
    rows = [json.loads(x) for x in preds.read_text().splitlines()]
    return report["accuracy"], {r["question_id"]: r["pred"] for r in rows}


def _lmms_eval(python: str, out: Path, tasks: str, model_args: str, env: dict[str, str], *extra: str) -> tuple[dict, dict, str]:
    """Run ``lmms-eval --model dynvlm`` offline; (results["results"], {task: logged samples}, its output)."""
    hf_home = out / "hf_home"
    hf_home.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(hf_home),
                "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    lmms_eval = str(Path(python).parent / "lmms-eval")
    cmd = [lmms_eval, "--model", "dynvlm", "--model_args", model_args, "--tasks", tasks, "--include_path", str(TASKS),
           "--batch_size", "1", "--output_path", str(out / "results"), "--log_samples", *extra]
    run = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=900, cwd=out)
    log = run.stdout + run.stderr
    found = sorted((out / "results").rglob("*_results.json"))
    assert found, f"lmms-eval wrote no results file (exit code {run.returncode}):\n{log[-6000:]}"
    results = json.loads(found[-1].read_text())["results"]
    samples = {}
    for f in (out / "results").rglob("*_samples_*.jsonl"):
        task = f.name.split("_samples_")[1].removesuffix(".jsonl")
        samples[task] = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    return results, samples, log


BENCH_TASKS = {  # dynvlm benchmark -> (local lmms-eval task, its results key)
    "videomme": ("videomme_local", "videomme_perception_score,none"),
    "mlvu": ("mlvu_dev_local", "mlvu_percetion_score,none"),
    "egoschema": ("egoschema_subset_local", "score,none"),
    "perceptiontest": ("perceptiontest_val_mc_local", "accuracy,none"),
    "tempcompass": ("tempcompass_multi_choice_local", "avg_accuracy,none"),
    "muirbench": ("muirbench_local", "muirbench_score_overall,flexible-extract"),
}


def _benchmark_files(folder: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Annotation files in each benchmark's lmms-eval shape over real colour clips (and PNG images for
    MuirBench): two questions whose media exist, then one whose media is missing. Returns the files
    and the environment naming them for the local task files."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for i, colour in enumerate(("red", "blue")):
        write_video(folder / f"b{i}.mp4", COLOURS[colour], 3 + i)
        Image.new("RGB", (20 + 4 * i, 16), COLOURS[colour]).save(folder / f"img{i}.png")
        clips.append((f"b{i}", NAMES.index(colour)))
    clips.append(("ghost", 0))
    opts = [*NAMES, "black", "white"]
    rows: dict[str, list[dict]] = {name: [] for name in BENCH_TASKS}
    for i, (clip, key) in enumerate(clips):
        letter = "ABCDE"[key]
        rows["videomme"].append({"videoID": clip, "question_id": f"vm{i}", "question": QUESTION, "answer": letter,
                                 "options": [f"{k}. {o}" for k, o in zip("ABCD", opts)], "duration": "short",
                                 "domain": "Knowledge", "sub_category": "Astronomy", "task_type": "Counting Problem"})
        rows["mlvu"].append({"video_name": f"{clip}.mp4", "question": f"{QUESTION} ({i})\n" + "\n".join(
            f"({k}) {o}" for k, o in zip("ABCD", opts)), "answer": letter, "task_type": ("count", "order")[i % 2],
            "duration": 183.5})
        rows["egoschema"].append({"video_idx": clip, "question_idx": f"eg{i}", "question": QUESTION, "answer": str(key),
                                  "option": [f"{k}. {o}" for k, o in zip("ABCDE", opts)]})
        rows["perceptiontest"].append({"video_name": clip, "question_id": i, "question": QUESTION, "options": opts[:3],
                                       "answer_id": key, "area": "physics", "reasoning": "descriptive", "tag": ["colour"]})
        rows["tempcompass"].append({"video_id": clip, "question": QUESTION + "\n" + "\n".join(f"{k}. {o}" for k, o in zip("ABC", opts)),
                                    "answer": f"{letter}. {opts[key]}", "dim": "direction"})
        images = [f"img{i}.png", "img0.png"] if clip != "ghost" else ["ghost.png", "img0.png"]
        rows["muirbench"].append({"idx": f"mb{i}", "task": "Visual Retrieval", "image_relation": "Similar", "image_type": "Photo",
                                  "question": "Which colour do both images share?", "options": opts[:4], "answer": letter,
                                  "image_list": images})
    files, env = {}, {}
    for name, records in rows.items():
        files[name] = folder / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in records))
        env[f"DYNVLM_{name.upper()}_ANNOTATIONS"] = str(files[name])
        env[f"DYNVLM_{name.upper()}_VIDEOS"] = str(folder)
    return files, env


def _lmms_reads(name: str, sample: dict) -> tuple[str, bool]:
    """(what the task read, whether it scored the question right) from one logged lmms-eval sample."""
    if name == "videomme":
        r = sample["videomme_perception_score"]
        return r["pred_answer"], r["score"] == 1.0
    if name == "mlvu":
        r = sample["mlvu_percetion_score"]
        return r["pred_answer"], r["pred_answer"] == r["answer"]
    if name == "egoschema":
        return "ABCDE"[sample["score"]["pred"]] if sample["score"]["pred"] >= 0 else "", \
            str(sample["score"]["pred"]) == str(sample["score"]["ground_truth"])
    if name == "perceptiontest":
        r = sample["accuracy"]
        return ("ABCD"[r["pred_id"]] if r["pred_id"] >= 0 else ""), r["correct"] == 1
    if name == "tempcompass":
        r = sample["avg_accuracy"]
        return "", r["rating"] == 1
    r = sample["muirbench_score_overall"]
    return r["pred"], r["pred"].lower().strip() == r["answer"].lower().strip()


def _compare_benchmarks(files: dict[str, Path], results: dict, samples: dict, evals: dict[str, dict], log: str) -> int:
    """Every benchmark: lmms-eval's metric equals dynvlm eval's, and question by question the same
    answer text, the same reading and the same verdict. Returns how many questions were right."""
    from dynvlm.data.items import read_items
    from dynvlm.scoring.readers import muirbench_filtered

    right_total = 0
    for name, (task, metric) in BENCH_TASKS.items():
        report, preds = evals[name]
        assert metric in results.get(task, {}), (task, log[-6000:])
        assert results[task][metric] == pytest.approx(report["benchmark"]["score"]), name
        items, _, _ = read_items(files[name])
        logged = sorted(samples[task], key=lambda x: x["doc_id"])
        assert len(logged) == len(items) == len(preds) == 3
        for item, sample in zip(items, logged):
            ours = preds[item.meta["question_id"]]
            theirs, right = _lmms_reads(name, sample)
            assert (ours["pred"] == ours["answer"]) == right, (name, ours, sample)
            if name != "tempcompass":
                assert ours["letter"] == theirs, (name, ours, theirs)
            raw = sample.get("resps", sample["filtered_resps"])  # the logger drops resps equal to filtered_resps
            while isinstance(raw, list):
                raw = raw[0]
            if ours.get("unreadable") is None:  # the same prompt and pixels: the same generated text
                # (MuirBench logs its filter's output: the letter of an answer starting "X.")
                text = muirbench_filtered(ours["text"]) if name == "muirbench" else ours["text"]
                assert text == raw.strip(), (name, ours, raw)
            else:
                assert raw == "" and "ghost" in ours["unreadable"]
            right_total += right
        assert [u["file"] for u in report["unreadable"]] == [str(files[name].parent / ("ghost.png" if name == "muirbench" else "ghost.mp4"))]
    return right_total


def _eval_benchmarks(cfg: dict, ckpt: str, files: dict[str, Path], out: Path, **sections) -> dict[str, tuple[dict, dict]]:
    """``dynvlm eval`` of every benchmark file: (report, {question_id: prediction record})."""
    from omegaconf import OmegaConf

    from dynvlm.evaluation.command import evaluate_cli

    evals = {}
    for name, path in files.items():
        report = evaluate_cli(OmegaConf.create({**cfg, **sections}), checkpoint=ckpt, data=str(path), out=str(out / name))
        rows = [json.loads(x) for x in (Path(report["written"]) / "predictions.jsonl").read_text().splitlines()]
        evals[name] = (report, {r["question_id"]: r for r in rows})
    return evals


@pytest.mark.slow
def test_lmms_eval_accuracy_equals_dynvlm_eval(lmms_python, trained, tmp_path):
    """Same checkpoint, same questions: lmms-eval's accuracy equals ``dynvlm eval``'s, question by question,
    by generation (chat model, with budget and compressor overrides) and by log-likelihood (--force_simple),
    on dynvlm's own file and on every benchmark's file (its task's metric, the same generated text, the
    same reading; a missing video or image is named and its question counted wrong on both sides)."""
    cfg, ckpt = trained
    data = colour_mc_file(tmp_path / "mc", min_seconds=3, spread=3)
    files, bench_env = _benchmark_files(tmp_path / "bench")
    env = {"DYNVLM_MC_ANNOTATIONS": str(data), **bench_env}
    tasks = ",".join(["dynvlm_mc", *(t for t, _ in BENCH_TASKS.values())])

    # generation, at a budget and compressor the checkpoint was not trained with
    budget = {**cfg["budget"], "tokens_per_frame": 4, "max_frames": 3}
    model = {**cfg["model"], "compressor": {"name": "tome"}}
    gen_acc, gen_preds = _dynvlm_eval(cfg, ckpt, data, tmp_path / "eval_gen", eval={"mode": "generate", "max_new_tokens": 8},
                                      budget=budget, model=model)
    evals = _eval_benchmarks(cfg, ckpt, files, tmp_path / "eval_gen_bench", eval={"mode": "auto", "max_new_tokens": 8},
                             budget=budget, model=model)
    results, samples, log = _lmms_eval(lmms_python, tmp_path / "lmms_gen", tasks,
                                       f"checkpoint={ckpt},device=cpu,compressor=tome,tokens_per_frame=4,max_frames=3,max_new_tokens=8",
                                       env)
    assert "dynvlm_mc" in results, log[-6000:]
    assert 0 < gen_acc < 1 and len(gen_preds) == 6
    assert results["dynvlm_mc"]["accuracy,none"] == pytest.approx(gen_acc)
    lmms_preds = {s["accuracy"]["question_id"]: s["accuracy"]["pred"] for s in samples["dynvlm_mc"]}
    assert lmms_preds == gen_preds
    _compare_benchmarks(files, results, samples, evals, log)
    for ghost in ("ghost.mp4", "ghost.png"):
        assert f"cannot read {'image' if ghost.endswith('png') else 'video'} {tmp_path / 'bench' / ghost}" in log
    ghost = next(s for s in samples["egoschema_subset_local"] if "ghost" in s["submission"])
    assert ghost["score"]["pred"] == -1 and ghost["filtered_resps"] == ""  # never upstream's random pick

    # log-likelihood of the option letters at the checkpoint's own budget: dynvlm's file by --force_simple's
    # log-likelihood requests, the benchmarks' generation requests answered with the likeliest letter (mode=loglik)
    ll_acc, ll_preds = _dynvlm_eval(cfg, ckpt, data, tmp_path / "eval_ll", eval={"mode": "loglik"})
    evals = _eval_benchmarks(cfg, ckpt, files, tmp_path / "eval_ll_bench", eval={"mode": "loglik"})
    tasks = ",".join(["dynvlm_mc_ppl", *(t for t, _ in BENCH_TASKS.values())])
    results, samples, log = _lmms_eval(lmms_python, tmp_path / "lmms_ll", tasks, f"checkpoint={ckpt},device=cpu,mode=loglik",
                                       env, "--force_simple")
    assert "dynvlm_mc_ppl" in results, log[-6000:]
    assert 0 < ll_acc < 1 and len(ll_preds) == 6
    assert results["dynvlm_mc_ppl"]["accuracy,none"] == pytest.approx(ll_acc)
    assert {s["accuracy"]["question_id"]: s["accuracy"]["pred"] for s in samples["dynvlm_mc_ppl"]} == ll_preds
    assert _compare_benchmarks(files, results, samples, evals, log) > 0  # letters: some are right


# ---------------------------------------------------------------------------------------------
# answer extraction parity: dynvlm.scoring.answers.extract_choice vs each benchmark's lmms-eval scoring

OPTIONS = ["red circle", "blue square", "green triangle", "yellow star", "white cross"]
OUTPUTS = [
    "A", "B", "C", "D", "A.", "B.", "C.", "D.", "(A)", "(B)", "(C)", "(D)", "A)", "B)", "C) green triangle",
    "D) yellow star", "A: red circle", "B: blue square", "A. red circle", "B. blue square", "C. green triangle",
    "The best answer is C.", "The best answer is (A)", "The answer is (B)", "The answer is D", "The correct answer is A.",
    "Answer: D", "Answer: (C)", "Best option: (A)", "Best option: B", "**B**", "**C.**", "`D`",
    "I think the answer is B because the square is blue.", "Looking at second 3, (C) fits.", "The correct option is D.",
    "B is correct.", "C, the green triangle.", "A\n", " B ", "(B) blue square",
    "", "   ", "I cannot tell from the video.", "The video shows several shapes moving around.", "none of the above",
    "c", "b.", "blue square", "Red Circle", "yellow star.", "The answer is Blue.", "Answer unclear", "Both shapes move.",
    "It is not possible to determine.", "Sorry, I don't know.", "E", "The answer is E.", "0", "1",
    "Answer: B.", "The answer is C. green triangle", "Option (A)", "(A) red circle", "So the answer is (D).",
    "My answer is B.", "B. It is the blue square.", "The correct choice is (C).", "I choose A.", "Final answer: (B)",
    "C. green triangle.", "A. The red circle is shown.", "D. yellow star, because it flashes.", "B because it moves.",
    "The best option is A.", "(C) because the triangle is green", "A red circle", "The answer is A red circle.",
]

# runs in .venv-lmms: each benchmark's own reading of every output, as an option index (None: no letter read)
READINGS = r'''
import json, random, sys
from lmms_eval.tasks.egoschema import utils as egoschema
from lmms_eval.tasks.mlvu import utils as mlvu
from lmms_eval.tasks.perceptiontest.val import utils as perceptiontest
from lmms_eval.tasks.videomme import utils as videomme

outputs, options = json.loads(sys.stdin.read())
letters = "ABCDE"
rows = {"videomme": [], "mlvu": [], "egoschema": [], "perceptiontest": []}
for text in outputs:
    for name, module in (("videomme", videomme), ("mlvu", mlvu)):
        letter = module.extract_characters_regex(text)
        rows[name].append({"index": letters.index(letter) if letter else None, "letter": letter})
    index2ans = {k: f"{k}. {o}" for k, o in zip(letters, options)}
    random.seed(0)
    letter, matched = egoschema.parse_multi_choice_response(text, list(letters), index2ans)
    rows["egoschema"].append({"index": letters.index(letter), "letter": letter, "random": not matched})
    doc = {"video_name": "v", "question": "q", "answer_id": 0}
    pred = perceptiontest.perceptiontest_val_process_results_mc(doc, [text])["accuracy"]["pred_id"]
    rows["perceptiontest"].append({"index": None if pred < 0 else pred, "letter": letters[pred] if pred >= 0 else ""})
'''

N_OPTIONS = {"videomme": 4, "mlvu": 4, "egoschema": 5, "perceptiontest": 3}


def _guessed(task: str, text: str, row: dict) -> bool:
    """lmms-eval guessed: EgoSchema picked a random option, or the letter it read stands only inside a
    word (extract_mcq_answer's last resort and answer-phrase rules: "Answer unclear" -> A)."""
    import re

    if row.get("random"):
        return True
    letter = row["letter"]
    return bool(letter) and re.search(rf"(?<![A-Za-z]){letter}(?![A-Za-z])", text) is None


@pytest.mark.parametrize("task", list(N_OPTIONS))
def test_answer_extraction_agrees_with_lmms_eval(lmms_probe, task):
    """Wherever lmms-eval does not guess, dynvlm reads the same option (or none) from the same output.

    VideoMME, MLVU and PerceptionTest read letters only: dynvlm's letter rules (``extract_choice``
    without option texts) must match them everywhere, and dynvlm eval's extra rule — an answer that
    is exactly one option's text — is the only other difference. EgoSchema also reads option
    texts, so it is compared with them. A letter beyond the options (PerceptionTest reads A-D for
    three options) can never be right and counts as no option.
    """
    from dynvlm.scoring.answers import extract_choice

    n = N_OPTIONS[task]
    rows = lmms_probe["readings"][task]
    assert len(rows) == len(OUTPUTS) >= 40
    compared = disagree = 0
    text_only = []
    for text, row in zip(OUTPUTS, rows):
        if _guessed(task, text, row):
            continue
        theirs = row["index"] if row["index"] is not None and row["index"] < n else None
        with_texts = extract_choice(text, n, OPTIONS[:n])
        ours = with_texts if task == "egoschema" else extract_choice(text, n)
        compared += 1
        if ours != theirs:
            disagree += 1
            print(f"{task}: {text!r}: dynvlm {ours}, lmms-eval {theirs}")
        if with_texts != theirs:
            text_only.append(text)
            assert extract_choice(text, n) is None and with_texts is not None, text
    assert disagree == 0
    assert compared >= 40
    if task != "egoschema":  # dynvlm eval reads option texts on top; nothing else differs
        assert "blue square" in text_only


# runs in .venv-lmms after READINGS: a broken checkpoint through lmms-eval's model registry, then the
# chat model's multi-round and missing-video paths on real requests
CHAT = r'''
from lmms_eval.api.instance import Instance
from lmms_eval.models import get_model
from dynvlm.lmms.model import DynVLM
from dynvlm.records import Sample, Turn

ckpt, video, ghost, broken = sys.argv[1:5]
try:
    get_model("dynvlm").create_from_arg_string(f"checkpoint={broken},device=cpu")
    load_error = None
except Exception as exc:
    load_error = f"{type(exc).__name__}: {exc}"
model = DynVLM(checkpoint=ckpt, device="cpu", max_new_tokens=4)
docs = {"t": {"test": {0: {"v": video}, 1: {"v": ghost}}}}
model.task_dict = docs
seen = []
META = [{"task": "t", "doc_id": i, "repeats": 1} for i in (0, 1)]

def doc_to_messages(doc, round_idx=None, previous_output=None, previous_round_info=None):
    turn = [{"role": "user", "content": [{"type": "video", "url": doc["v"]}, {"type": "text", "text": "what colour is the video ?"}]}]
    if round_idx is None:
        return turn
    seen.append((round_idx, list(previous_output), previous_round_info))
    if round_idx >= 2:
        return (None, True, previous_output, previous_round_info)
    return ([{"role": "user", "content": [{"type": "text", "text": "answer with the letter ."}]}], False, previous_output, {"round": round_idx})

reqs = [Instance("generate_until_multi_round", (None, doc_to_messages, {}, i, "t", "test"), idx=0, metadata=META[i]) for i in (0, 1)]
rounds = model.generate_until_multi_round(reqs)
single = model.generate_until([Instance("generate_until", (None, doc_to_messages, {}, i, "t", "test"), idx=0, metadata=META[i]) for i in (0, 1)])
# the second round answers the whole conversation, first answer included
frames, stamps, kind = model._read(video)
conv = [Turn("human", "<video>\nwhat colour is the video ?"), Turn("gpt", rounds[0][0]), Turn("human", "answer with the letter .")]
expected = model.model.generate([Sample(frames, stamps, conv, kind)], max_new_tokens=4).texts[0]
print(json.dumps({"rounds": rounds, "single": single, "seen": seen, "expected": expected, "missing": model.missing,
                  "load_error": load_error, "readings": rows}))
'''


@pytest.fixture(scope="module")
def lmms_probe(lmms_python, trained, tmp_path_factory):
    """One run of READINGS + CHAT in .venv-lmms (one lmms-eval import): its JSON and its stderr."""
    _, ckpt = trained
    folder = tmp_path_factory.mktemp("lmms_probe")
    video = write_video(folder / "v.mp4", COLOURS["blue"], 3)
    paths = {"video": str(video), "ghost": str(folder / "ghost.mp4"), "broken": str(folder / "gone" / "model.ckpt")}
    run = subprocess.run([lmms_python, "-c", READINGS + CHAT, ckpt, paths["video"], paths["ghost"], paths["broken"]],
                         input=json.dumps([OUTPUTS, OPTIONS]), capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(folder / "hf")})
    assert run.returncode == 0, run.stderr[-4000:]
    return {**json.loads(run.stdout.strip().splitlines()[-1]), **paths, "stderr": run.stderr}


def test_lmms_eval_broken_checkpoint_names_the_path(lmms_probe):
    """Loading ``dynvlm`` through lmms-eval's registry stops at model load with an error naming the checkpoint."""
    assert lmms_probe["load_error"] == f"CheckpointError: dynvlm checkpoint '{lmms_probe['broken']}': no such file"


def test_chat_model_multi_round_and_missing_video(lmms_probe):
    out, ghost = lmms_probe, lmms_probe["ghost"]
    assert len(out["rounds"][0]) == 2 and out["rounds"][1] == [""]
    assert out["rounds"][0][1] == out["expected"]
    assert out["seen"][:2] == [[1, out["rounds"][0][:1], None], [2, out["rounds"][0], {"round": 1}]]
    assert out["single"][0] == out["rounds"][0][0] and out["single"][1] == ""
    assert out["missing"] == [ghost, ghost]
    assert f"cannot read video {ghost} (no such file)" in out["stderr"]
