"""``dynvlm eval CONFIG --checkpoint CKPT --data FILE``: multiple-choice accuracy of a checkpoint.

``FILE`` is a multiple-choice file in any shape :mod:`dynvlm.data` reads (VideoMME, MLVU,
EgoSchema, PerceptionTest, or the synthetic generator's ``*_mc.jsonl``). Scoring follows
``eval.mode``: ``loglik`` picks the option letter with the highest log-likelihood,
``generate`` generates an answer and reads the letter with :func:`dynvlm.answers.extract_choice`
(unparseable answers count as wrong). Results — overall and per category — are written as
``eval.json``, ``eval.md`` and ``predictions.jsonl`` to ``--out`` (default: ``<run>/eval/<file stem>``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import ConfigError


def evaluate_cli(cfg: DictConfig, checkpoint: str | None = None, data: str | None = None, out: str | None = None) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (default: the run's last) on ``data`` (default: ``cfg.data.test``)."""
    from . import train

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if data is not None:
        if not Path(data).is_file():
            raise ConfigError(f"--data {data!r}: no such file")
        OmegaConf.update(cfg, "data.test", str(Path(data).resolve()), force_add=True)
    if not (cfg.get("data") or {}).get("test"):
        raise ConfigError("nothing to evaluate: pass --data FILE or set data.test in the config")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ConfigError(f"--checkpoint {checkpoint!r}: no such file")
    # each evaluated file gets its own folder: the run's own predictions.jsonl is left alone
    folder = Path(out) if out else train.run_dir(cfg) / "eval" / Path(str(cfg.data.test)).stem
    folder.mkdir(parents=True, exist_ok=True)
    result = train.test(cfg, checkpoint=checkpoint, predictions=folder / "predictions.jsonl")
    report = summarise(result, cfg, checkpoint)
    (folder / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "eval.md").write_text(markdown(report))
    return {**report, "written": str(folder)}


def summarise(result: Mapping[str, Any], cfg: DictConfig, checkpoint: str | None) -> dict[str, Any]:
    """Accuracy overall and per category from a ``dynvlm.train.test`` result."""
    per_category = {k.removeprefix("test/acc/"): float(v) for k, v in result.items() if k.startswith("test/acc/")}
    model = cfg.get("model") or {}
    return {
        "data": str(cfg.data.test),
        "checkpoint": checkpoint or result.get("checkpoint"),
        "mode": (cfg.get("eval") or {}).get("mode", "loglik"),
        "compressor": (model.get("compressor") or {}).get("name"),
        "tokens_per_frame": (cfg.get("budget") or {}).get("tokens_per_frame"),
        "accuracy": float(result["test/acc"]) if "test/acc" in result else None,
        "questions": int(result.get("test/n", 0)),
        "per_category": dict(sorted(per_category.items())),
    }


def markdown(report: Mapping[str, Any]) -> str:
    """The report as a small markdown table."""
    acc = report.get("accuracy")
    lines = [
        f"# Evaluation of {report.get('checkpoint') or 'the config weights'}",
        "",
        f"- data: `{report['data']}` ({report['questions']} questions), scoring: {report['mode']}",
        f"- compressor: {report.get('compressor')}, tokens per frame: {report.get('tokens_per_frame') or 'budget policy'}",
        "",
        "| category | accuracy (%) |",
        "|---|---|",
        f"| **overall** | {'—' if acc is None else f'{100 * acc:.1f}'} |",
    ]
    lines += [f"| {cat} | {100 * v:.1f} |" for cat, v in report["per_category"].items()]
    return "\n".join(lines) + "\n"
