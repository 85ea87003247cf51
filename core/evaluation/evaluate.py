"""``dynvlm eval CONFIG [key=value ...] --checkpoint CKPT --data FILE``: multiple-choice accuracy of a checkpoint.

``FILE`` is a multiple-choice file in any shape :mod:`dynvlm.data` reads (VideoMME, MLVU,
EgoSchema, PerceptionTest, or the synthetic generator's ``*_mc.jsonl``); without ``--data`` the
config's ``data.test`` (or its ``data.synth`` test file) is used. Scoring follows ``eval.mode``:
``loglik`` picks the option letter with the highest log-likelihood, ``cloze`` the option text,
``generate`` generates an answer and reads the letter with :func:`dynvlm.scoring.answers.extract_choice`
(unparseable answers count as wrong). Results — overall and per category — are written as
``eval.json``, ``eval.md`` and ``predictions.jsonl`` to ``--out`` (default:
``<run>/eval/<file stem>/<setting slug>``, e.g. ``eval/test_mc/tome@36_N12000``).
``eval.json`` also holds the measured inference cost (``cost``: FLOPs per part, prefill latency,
KV-cache bytes, peak memory; :func:`dynvlm.measure.cost.measure_cost` on the first test samples).

Training-free evaluation: the model is built from ``CONFIG`` plus the overrides, so a checkpoint
can be evaluated with another compressor or budget than it was trained with
(``model.compressor.name=tome budget.tokens_per_frame=36``). The trained setting is read from the
checkpoint (``hyper_parameters["config"]``, else the run's ``config.yaml``) and both are named in
the results. A parameter-free compressor swaps in directly; one with parameters needs them in the
checkpoint (:func:`stale_compressor_weights` raises :class:`CompressorWeightsError` otherwise); the
trained compressor's own weights that the new one does not have are dropped with a notice.
A config with a ``sweep:`` section evaluates every point of its grid on one checkpoint
(:mod:`dynvlm.evaluation.transfer`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dynvlm.evaluation.report import complete_report, report_markdown
from dynvlm.model.checkpoint import read_checkpoint, trained_config
from dynvlm.model.restore import restore
from dynvlm.schema import BudgetConfig
from dynvlm.scoring.records import usage_summary
from dynvlm.util.configs import config_dict
from dynvlm.util.labels import setting_label
from dynvlm.util.paths import run_dir, test_file

# ------------------------------------------------------------------------------------------
# settings: what a model was trained / is evaluated with


def setting(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``{"compressor", "tokens_per_frame", "max_tokens", "policy", "policy_keys", "label"}`` of a run config
    (``None`` for ``None``).

    ``label`` is ``"<compressor>@<M>"``, or ``"<compressor>@dynamic"`` when ``budget.tokens_per_frame``
    is unset (the budget rule ``clamp(max_tokens // T, ...)`` picks ``M``); a budget policy other
    than the default ``dynamic`` is named too (``"pool@16 (keyframes)"``, ``"pool (keyframes)"``; :func:`dynvlm.util.labels.setting_label`), and
    the budget its own keys fix is read into the label: ``policy.tokens_per_frame`` as ``M``
    (``"tome@36 (fixed)"``), ``policy.frames`` as ``T`` (``"pool@T=8 (frames)"``). ``policy_keys``
    holds every other key of the policy mapping (compared by :func:`same_setting`).
    """
    if config is None:
        return None
    # read key by key (defaults from BudgetConfig), not through schema.section: a checkpoint's
    # config from an older or newer schema must still be describable
    budget, defaults = dict(config.get("budget") or {}), BudgetConfig()
    name = ((config.get("model") or {}).get("compressor") or {}).get("name")
    m = budget.get("tokens_per_frame", defaults.tokens_per_frame)
    spec = budget.get("policy", getattr(defaults, "policy", "dynamic"))  # a name or {name: ..., **keys}
    keys = {k: v for k, v in dict(spec).items() if k != "name"} if isinstance(spec, Mapping) else {}
    policy = str(spec.get("name") if isinstance(spec, Mapping) else spec)
    # the budget a policy's own keys fix: without them two `fixed` or `frames` settings look alike
    parts = [str(m)] if m is not None else []
    if m is None and keys.get("tokens_per_frame") is not None:
        parts.append(str(keys["tokens_per_frame"]))
    if keys.get("frames") is not None:
        parts.append(f"T={keys['frames']}")
    budget_text = ",".join(parts) or ("dynamic" if policy == "dynamic" else None)
    label = setting_label(name, policy, budget_text)
    return {"compressor": name, "tokens_per_frame": m, "max_tokens": budget.get("max_tokens", defaults.max_tokens),
            "policy": policy, "policy_keys": keys, "label": label}


def same_setting(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two :func:`setting` dicts describe the same setting (every field, ``max_tokens`` and the
    policy's keys included, not only the label); ``False`` when either is ``None``."""
    if a is None or b is None:
        return False
    return {k: v for k, v in a.items() if k != "label"} == {k: v for k, v in b.items() if k != "label"}


def setting_slug(evaluated: Mapping[str, Any]) -> str:
    """A folder name for an evaluated :func:`setting`: its label and ``N_max`` with path-safe characters
    (``"tome@36_fixed_N12000"``), so evaluations at other settings do not overwrite each other."""
    text = f"{evaluated['label']}_N{evaluated.get('max_tokens')}"
    return re.sub(r"[^A-Za-z0-9@=.,+-]+", "_", text).strip("_")


def setting_line(trained: Mapping[str, Any] | None, evaluated: Mapping[str, Any]) -> str:
    """``"trained with pool@100, evaluated with tome@36"``, or ``"trained and evaluated with pool@4"``
    when the whole settings agree (:func:`same_setting`)."""
    if trained is None:
        return f"weights from the config (no checkpoint), evaluated with {evaluated['label']}"
    t, e = trained["label"], evaluated["label"]
    if same_setting(trained, evaluated):
        return f"trained and evaluated with {e}"
    if t == e and trained.get("max_tokens") != evaluated.get("max_tokens"):  # same M, another N_max: other frame counts
        t, e = f"{t} (N_max={trained.get('max_tokens')})", f"{e} (N_max={evaluated.get('max_tokens')})"
    if t == e:  # the label does not show what differs (another policy key): name the keys
        t, e = f"{t} {json.dumps(trained.get('policy_keys') or {}, sort_keys=True)}", \
            f"{e} {json.dumps(evaluated.get('policy_keys') or {}, sort_keys=True)}"
    return f"trained with {t}, evaluated with {e}"


def evaluate(cfg: DictConfig | Mapping[str, Any], checkpoint: str | None, folder: Path,
             checkpoint_data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (or the config's own weights when ``None``) with the setting ``cfg`` describes.

    Writes ``eval.json``, ``eval.md`` and ``predictions.jsonl`` into ``folder``.

    Args:
        cfg: the evaluation-time run config (compressor, budget, data.test, eval.mode, trainer).
        checkpoint: a ``.ckpt`` path or ``None``.
        folder: where the results go (created).
        checkpoint_data: the checkpoint already read (:func:`read_checkpoint`), to read it once in a sweep.

    Returns:
        The report (see :func:`summarise`) plus ``written``: the folder.
    """
    ckpt = checkpoint_data if checkpoint_data is not None else (read_checkpoint(checkpoint) if checkpoint else None)
    trained = trained_config(ckpt, checkpoint) if ckpt is not None and checkpoint else None
    folder.mkdir(parents=True, exist_ok=True)
    result, usage, dropped = run_test(cfg, ckpt, folder / "predictions.jsonl", source=checkpoint)
    result["checkpoint"] = checkpoint
    report = summarise(result, cfg, checkpoint, trained=trained, used=usage, dropped=dropped,
                       cost=result.get("cost"))
    # every question counts, unreadable ones wrong; a benchmark's file also gets its task's metric
    report = complete_report(report, config_dict(cfg), folder / "predictions.jsonl")
    (folder / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "eval.md").write_text(markdown(report) + report_markdown(report))
    return {**report, "written": str(folder)}


def run_test(cfg: DictConfig | Mapping[str, Any], checkpoint: Mapping[str, Any] | None,
             predictions: Path, source: str | None = None) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Build the model ``cfg`` describes, load ``checkpoint``'s weights into it and run Lightning's test loop.

    The weights are loaded here rather than by ``Trainer.test(ckpt_path=...)`` so that a swapped
    compressor is checked before any data is read and the model's budget plans can be recorded.

    Args:
        cfg: the evaluation-time run config.
        checkpoint: a checkpoint read by :func:`read_checkpoint` (not modified), or ``None``.
        predictions: the per-question JSONL to write.
        source: the checkpoint's path, named in errors.

    Returns:
        ``(metrics, used, dropped)``: the test metrics (``test/acc``, ``test/acc/<category>``,
        ``test/ceiling[/<family>]``, ...) plus ``cost``: the :data:`dynvlm.run.sweep.COST_COLUMNS` measured
        on the first :data:`dynvlm.run.sweep.COST_SAMPLES` test samples after the test loop
        (:func:`dynvlm.run.sweep.point_cost`, ``{}`` without test samples); the visual budget the model
        actually used (:func:`dynvlm.scoring.records.usage_summary` of the
        predictions); and the trained compressor's weights that were dropped.
    """
    from dynvlm.model.parallel import precision_dtype, precision_of
    from dynvlm.run import train
    from dynvlm.run.sweep import point_cost

    cfg = OmegaConf.create(config_dict(cfg))
    precision_dtype(precision_of(cfg.get("trainer")))  # a precision the cost cannot be measured in fails before the test loop
    model, dropped = restore(cfg, checkpoint, source)
    model.predictions_path = predictions
    trainer = train.make_trainer(cfg, fit=False, model=model)
    results = trainer.test(model, datamodule=train.make_datamodule(cfg), verbose=False)
    metrics = {k: float(v) for r in results for k, v in r.items()}
    records = [json.loads(line) for line in predictions.read_text().splitlines()] if predictions.is_file() else []
    usage = usage_summary(records)
    # measured the way a sweep point is (same samples, repeats and columns), so eval, transfer and
    # sweep rows compare; a few prefills of COST_SAMPLES samples: small next to the test loop
    cost = point_cost(model, config_dict(cfg))
    return {"run_dir": str(run_dir(cfg)), **metrics, "cost": cost}, usage, dropped


# ------------------------------------------------------------------------------------------
# reports


def summarise(result: Mapping[str, Any], cfg: DictConfig | Mapping[str, Any], checkpoint: str | None,
              trained: Mapping[str, Any] | None = None, used: Mapping[str, Any] | None = None,
              dropped: Sequence[str] = (), cost: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report of one evaluation.

    Args:
        result: a test result (``test/acc``, ``test/n``, ``test/acc/<category>``).
        cfg: the evaluation-time config.
        checkpoint: the evaluated checkpoint's path (``None``: the config's weights).
        trained: the config the checkpoint was trained with (:func:`trained_config`).
        used: the visual budget the model used (:func:`dynvlm.scoring.records.usage_summary`).
        dropped: the trained compressor's weights the evaluated one did not use.
        cost: the measured inference cost (:func:`dynvlm.run.sweep.point_cost`), ``None``: not measured.

    Returns:
        ``data``, ``checkpoint``, ``mode``, ``compressor``, ``tokens_per_frame``, ``trained_with`` and
        ``evaluated_with`` (:func:`setting`; ``trained_with`` is ``None`` without a checkpoint),
        ``setting`` (one line naming both), ``used``, ``dropped_weights``, ``accuracy``, ``questions``,
        ``per_category``, ``ceilings`` (``{"ceiling", "ceiling/<family>"}``: the accuracy ceiling of the
        frames the model really kept, from ``test/ceiling[/<family>]``; empty when the data defines
        none) and ``cost`` (``{}`` when not measured).
    """
    per_category = {k.removeprefix("test/acc/"): float(v) for k, v in result.items() if k.startswith("test/acc/")}
    ceilings = {k.removeprefix("test/"): float(v) for k, v in result.items()
                if k == "test/ceiling" or k.startswith("test/ceiling/")}
    plain = config_dict(cfg)
    evaluated = setting(plain)
    assert evaluated is not None
    trained_with = setting(trained) if trained is not None else None
    return {
        "data": str((plain.get("data") or {}).get("test") or test_file(plain)),
        "checkpoint": checkpoint or result.get("checkpoint"),
        "mode": (plain.get("eval") or {}).get("mode", "loglik"),
        "compressor": evaluated["compressor"],
        "tokens_per_frame": evaluated["tokens_per_frame"],
        "trained_with": trained_with,
        "evaluated_with": evaluated,
        "setting": setting_line(trained_with, evaluated),
        "used": dict(used or {}),
        "dropped_weights": list(dropped),
        "accuracy": float(result["test/acc"]) if "test/acc" in result else None,
        "questions": int(result.get("test/n", 0)),
        "per_category": dict(sorted(per_category.items())),
        "ceilings": dict(sorted(ceilings.items())),
        "cost": dict(cost or {}),
    }


def markdown(report: Mapping[str, Any]) -> str:
    """The report as a few lines and a small markdown table."""
    acc = report.get("accuracy")
    used = report.get("used") or {}
    lines = [
        f"# Evaluation of {report.get('checkpoint') or 'the config weights'}",
        "",
        f"- {report['setting']}",
        f"- data: `{report['data']}` ({report['questions']} questions), scoring: {report['mode']}",
    ]
    if used:
        lines.append(f"- used: {', '.join(map(str, used['tokens_per_frame']))} tokens per frame, "
                     f"{used['frames']:g} frames and {used['visual_tokens']:g} visual tokens per question (mean)"
                     + (f"; {used['actual_tokens']:g} actually spliced" if "actual_tokens" in used else ""))
    if report.get("ceilings", {}).get("ceiling") is not None:
        lines.append(f"- accuracy ceiling of the frames kept: {100 * report['ceilings']['ceiling']:.1f}%")
    if report.get("dropped_weights"):
        lines.append(f"- {len(report['dropped_weights'])} weights of the trained compressor "
                     f"({report['trained_with']['compressor']}) were not used")
    lines += [
        "",
        "| category | accuracy (%) |",
        "|---|---|",
        f"| **overall** | {'—' if acc is None else f'{100 * acc:.1f}'} |",
    ]
    lines += [f"| {cat} | {100 * v:.1f} |" for cat, v in report["per_category"].items()]
    cost = report.get("cost") or {}
    if cost:
        lines += ["", "## Cost per test sample", "",
                  "Mean of the first test samples (`dynvlm.measure.cost.measure_cost`): FLOPs by torch's FlopCounterMode, "
                  "prefill latency the median of repeats, peak memory the max.", "",
                  "| measure | value |", "|---|---|"]
        lines += [f"| {k} | {_cost_value(v)} |" for k, v in cost.items()]
    return "\n".join(lines) + "\n"


def _cost_value(value: Any) -> str:
    """A cost cell: ``—`` when not measured (``None``), large counts in scientific notation."""
    if value is None:
        return "—"
    return f"{value:.3g}" if isinstance(value, (int, float)) and abs(value) >= 1e5 else str(value)
