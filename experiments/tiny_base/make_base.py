"""Make the tiny pretrained base that ``experiments/synthetic.yaml`` loads by ``path:``.

Two stages (YAML beside this file), then an export::

    A  stage_a.yaml  encoder + projector + LLM from random init, detail questions only, one frame at
                     full tokens (no compression); the encoder is frozen afterwards
    B  stage_b.yaml  projector + LLM (+ the pruner's scorer) on the embedded default's families
                     (shape: detail; flash: coverage), answered in words, with a random compressor
                     and a random M per batch
    export           weights/encoder (CLIPVisionModel), weights/llm (Qwen2ForCausalLM + tokenizer),
                     weights/projector.safetensors, weights/projector_prune.safetensors (+ the scorer),
                     weights/manifest.json (sha256, recipe, command, steps, machine, wall time,
                     per-family accuracy on the synthetic val split, options scored by cloze)

Reproduce the shipped weights (under 30 min on 2 CPU cores, data generation included: the measured
time is in docs/benchmarks.md)::

    .venv/bin/python experiments/tiny_base/make_base.py

``--steps N`` caps every stage at ``N`` steps and ``--runs``/``--weights`` move the outputs (the
tests use them for a few-step run); ``--stages`` picks stages (``a,b,export,eval``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from dynvlm.util.paths import sha256

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
STAGES = ("a", "b")
COMPRESSORS = ("pool", "tome", "prune")
TOKENS = (1, 4, 16, 64)
WEIGHTS = HERE / "weights"


class RandomCompressor(pl.Callback):
    """Each training batch runs with a random compressor (pool / tome / the model's own prune) and a
    random tokens-per-frame ``M`` from ``tokens`` (frames then drop to ``N_max // M``).

    The model is built with ``prune`` so its scorer's parameters are in the optimiser; pool and
    tome have none. The model's own compressor is put back after every batch, so checkpoints
    always hold the scorer.
    """

    def __init__(self, tokens: Sequence[int] = TOKENS, compressors: Sequence[str] = COMPRESSORS, seed: int = 0) -> None:
        self.tokens, self.names, self.rng = list(tokens), list(compressors), random.Random(seed)
        self.others: dict[str, torch.nn.Module] = {}
        self.own: torch.nn.Module | None = None
        self.counts: dict[str, int] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        from dynvlm.config import build_component

        self.own = pl_module.compressor
        for name in self.names:
            if name != "prune":
                self.others[name] = build_component("compressor", {"name": name}, dim=pl_module.encoder.width)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        name, m = self.rng.choice(self.names), self.rng.choice(self.tokens)
        comp = self.own if name == "prune" else self.others[name]
        comp.train(pl_module.training)
        pl_module.compressor = comp
        pl_module.budget.cfg.tokens_per_frame = m
        self.counts[f"{name}@{m}"] = self.counts.get(f"{name}@{m}", 0) + 1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        pl_module.compressor = self.own


def stage_config(stage: str, runs: Path | None, steps: int | None, overrides: Sequence[str],
                 data: Path | None = None) -> Any:
    """The loaded config of stage ``stage`` with the run folder, step cap, data folder and overrides applied.

    ``data`` moves each stage's synthetic dataset into that folder (same folder name as in the YAML).
    """
    from dynvlm import load_config

    extra = list(overrides)
    if data is not None:
        out = Path(str(load_config(HERE / f"stage_{stage}.yaml", validate=False).data.synth.out))
        extra.append(f"data.synth.out={data / out.name}")
    if runs is not None:
        extra.append(f"output_dir={runs}")
        if stage != STAGES[0]:
            prev = STAGES[STAGES.index(stage) - 1]
            extra.append(f"stage.resume_from={runs}/tiny_base/stage_{prev}/checkpoints/last.ckpt")
    if steps is not None:
        extra.append(f"trainer.max_steps={steps}")
    return load_config(HERE / f"stage_{stage}.yaml", extra)


def run_stage(stage: str, runs: Path | None, steps: int | None, overrides: Sequence[str],
              data: Path | None = None) -> dict[str, Any]:
    """Fit one stage (resuming its own ``last.ckpt`` if interrupted); returns steps and wall time."""
    from dynvlm.run import train
    cfg = stage_config(stage, runs, steps, overrides, data)
    callbacks = [] if stage == "a" else [RandomCompressor(seed=int(cfg.seed))]
    t0 = time.perf_counter()
    out = train.fit(cfg, callbacks=callbacks)
    info = {"steps": out["global_step"], "wall_s": round(time.perf_counter() - t0, 1), "checkpoint": out["checkpoint"],
            "loss": round(float(out.get("train/loss", float("nan"))), 4)}
    if callbacks:
        info["batches_per_compressor_and_M"] = dict(sorted(callbacks[0].counts.items()))
    print(f"stage {stage}: {info}", flush=True)
    return info


def export(runs: Path | None, weights: Path, overrides: Sequence[str], data: Path | None = None) -> list[Path]:
    """Write the HF folders and safetensors of the last stage's final weights into ``weights``; return the files."""
    from safetensors.torch import save_file

    from dynvlm.model.video_llm import VideoLLM

    cfg = stage_config(STAGES[-1], runs, None, overrides, data)
    last = Path(str(cfg.output_dir)) / "tiny_base" / f"stage_{STAGES[-1]}" / "checkpoints" / "last.ckpt"
    cfg.stage.resume_from = str(last)
    model = VideoLLM(cfg)
    weights.mkdir(parents=True, exist_ok=True)
    enc = model.encoder.model
    enc.config.num_hidden_layers = len(getattr(enc, "vision_model", enc).encoder.layers)  # as stripped
    enc.save_pretrained(weights / "encoder")
    model.llm.model.save_pretrained(weights / "llm")
    model.llm.tokenizer.save_pretrained(weights / "llm")
    save_file({f"projector.{k}": v.contiguous() for k, v in model.projector.state_dict().items()},
              str(weights / "projector.safetensors"))
    both = {f"projector.{k}": v for k, v in model.projector.state_dict().items()}
    both.update({f"compressor.{k}": v for k, v in model.compressor.state_dict().items()})
    save_file({k: v.contiguous() for k, v in both.items()}, str(weights / "projector_prune.safetensors"))
    return sorted(p for p in weights.rglob("*") if p.is_file() and p.name != "manifest.json")


def evaluate(weights: Path, runs: Path | None, split: str = "val", compressors: Sequence[str] = ("pool",),
             tokens: Sequence[int] = TOKENS, overrides: Sequence[str] = (), data: Path | None = None
             ) -> dict[str, dict[str, float]]:
    """Accuracy per family of the exported base on the synthetic ``split`` at each compressor and M."""
    from omegaconf import OmegaConf

    from dynvlm.data.synth import ceilings
    from dynvlm.run import train

    base = OmegaConf.to_container(stage_config(STAGES[-1], runs, None, overrides, data), resolve=True)
    data_dir = Path(base["data"]["synth"]["out"])
    results: dict[str, dict[str, float]] = {}
    for comp in compressors:
        for m in tokens:
            cfg = OmegaConf.create(base)
            cfg.name = f"tiny_base/eval/{comp}_M{m}"
            cfg.model.encoder = {"name": "clip", "path": str(weights / "encoder"), "select_layer": -1}
            cfg.model.llm = {"name": "hf", "path": str(weights / "llm"), "system_prompt": ""}
            cfg.model.compressor = {"name": comp}
            cfg.budget.tokens_per_frame = m
            head = "projector_prune.safetensors" if comp == "prune" else "projector.safetensors"
            cfg.stage = {"name": "custom", "trainable": ["projector"], "resume_from": str(weights / head)}
            cfg.data.test = str(data_dir / f"{split}_mc.jsonl")
            res = train.test(cfg)
            row = {k.removeprefix("test/"): round(v, 4) for k, v in res.items() if k.startswith("test/acc")}
            recs = [json.loads(line) for line in open(str(cfg.data.test))]
            frames = min(int(cfg.budget.max_frames), int(cfg.budget.max_tokens) // m)
            row.update({f"ceiling/{k}": round(v, 4) for k, v in
                        ceilings(recs, cfg.budget.fps, cfg.budget.max_frames, frames).items()})
            results[f"{comp}@M={m}"] = row
            print(f"eval {comp} M={m}: {row}", flush=True)
    return results


def recipe_files() -> list[Path]:
    """The files that decide the base: the stage YAMLs and this script."""
    return [HERE / "common.yaml", *(HERE / f"stage_{s}.yaml" for s in STAGES), HERE / "make_base.py"]


def recipe_digest() -> dict[str, str]:
    """``{path relative to the repository: sha256}`` of :func:`recipe_files` (the manifest records it,
    so a recipe edited after the base was made no longer matches it)."""
    return {str(p.relative_to(ROOT)): sha256(p) for p in recipe_files()}


def machine() -> dict[str, Any]:
    """CPU model, cores, torch threads, versions."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", default="a,b,export,eval", help="comma-separated subset of a,b,export,eval")
    p.add_argument("--steps", type=int, default=None, help="cap every stage at this many steps (tests)")
    p.add_argument("--runs", type=Path, default=None, help="run folder (default: the YAML's output_dir, runs/)")
    p.add_argument("--data", type=Path, default=None, help="folder for the synthetic datasets (default: data/)")
    p.add_argument("--weights", type=Path, default=WEIGHTS, help="where the exported base goes")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every stage")
    args = p.parse_args(argv)
    todo = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in todo if s not in (*STAGES, "export", "eval")]
    if bad:
        p.error(f"unknown stage {bad[0]!r}; choose from {', '.join(STAGES)}, export, eval")
    # measured: oneDNN off cuts a tiny model's CPU step from 0.37 to 0.22 s (docs/benchmarks.md)
    mkldnn, threads = torch.backends.mkldnn.enabled, torch.get_num_threads()
    torch.backends.mkldnn.enabled = False
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _make(args, todo, argv)
    finally:
        torch.backends.mkldnn.enabled = mkldnn
        torch.set_num_threads(threads)


def _make(args: argparse.Namespace, todo: list[str], argv: Sequence[str] | None) -> int:
    t0 = time.perf_counter()
    manifest_path = args.weights / "manifest.json"
    manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    stages = manifest.setdefault("stages", {})
    for s in STAGES:
        if s in todo:
            stages[s] = {"recipe": f"experiments/tiny_base/stage_{s}.yaml", **run_stage(s, args.runs, args.steps, args.overrides, args.data)}
    if "export" in todo:
        files = export(args.runs, args.weights, args.overrides, args.data)
        manifest["files"] = {str(f.relative_to(args.weights)): sha256(f) for f in files}
        manifest["bytes"] = sum(f.stat().st_size for f in files)
    if "eval" in todo:
        manifest["accuracy_val"] = evaluate(args.weights, args.runs, overrides=args.overrides, data=args.data)
    from omegaconf import OmegaConf

    synth = OmegaConf.to_container(stage_config(STAGES[-1], args.runs, None, args.overrides, args.data).data.synth)
    synth.pop("out", None)
    synth_a = OmegaConf.to_container(stage_config(STAGES[0], args.runs, None, args.overrides, args.data).data.synth)
    synth_a.pop("out", None)
    manifest.update({
        "command": ".venv/bin/python experiments/tiny_base/make_base.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "recipe": [str(p.relative_to(ROOT)) for p in recipe_files()],
        "recipe_sha256": recipe_digest(),
        "trained_on": {"split": "train", "synth": synth, "synth_stage_a": synth_a,
                       "note": "stage A asks [shape, where] about the first frame of its own train split (synth_stage_a: "
                               "16000 4-s clips) and stage B [shape, shape, shape, flash] about the train split of synth; "
                               "val/test never trained on"},
        "machine": machine(),
        "made_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
    })
    manifest.setdefault("wall_s", {})[",".join(todo)] = round(time.perf_counter() - t0, 1)
    args.weights.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {manifest_path}")
    return 0


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


if __name__ == "__main__":
    raise SystemExit(main())
