"""``dynvlm eval CONFIG [key=value ...] --checkpoint CKPT --data FILE``: multiple-choice accuracy of a checkpoint.

``FILE`` is a multiple-choice file in any shape :mod:`dynvlm.data` reads (VideoMME, MLVU,
EgoSchema, PerceptionTest, or the synthetic generator's ``*_mc.jsonl``); without ``--data`` the
config's ``data.test`` (or its ``data.synth`` test file) is used. Scoring follows ``eval.mode``:
``loglik`` picks the option letter with the highest log-likelihood, ``cloze`` the option text,
``generate`` generates an answer and reads the letter with :func:`dynvlm.answers.extract_choice`
(unparseable answers count as wrong). Results — overall and per category — are written as
``eval.json``, ``eval.md`` and ``predictions.jsonl`` to ``--out`` (default:
``<run>/eval/<file stem>/<setting slug>``, e.g. ``eval/test_mc/tome@36_N12000``).
``eval.json`` also holds the measured inference cost (``cost``: FLOPs per part, prefill latency,
KV-cache bytes, peak memory; :func:`dynvlm.cost.measure_cost` on the first test samples).

Training-free evaluation: the model is built from ``CONFIG`` plus the overrides, so a checkpoint
can be evaluated with another compressor or budget than it was trained with
(``model.compressor.name=tome budget.tokens_per_frame=36``). The trained setting is read from the
checkpoint (``hyper_parameters["config"]``, else the run's ``config.yaml``) and both are named in
the results. A parameter-free compressor swaps in directly; one with parameters needs them in the
checkpoint (:func:`stale_compressor_weights` raises :class:`CompressorWeightsError` otherwise); the
trained compressor's own weights that the new one does not have are dropped with a notice.
A config with a ``sweep:`` section evaluates every point of its grid on one checkpoint
(:mod:`dynvlm.transfer`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError
from .model import config_dict
from .schema import BudgetConfig

#: state-dict prefix of the compressor's weights in a :class:`~dynvlm.model.VideoLLM`
COMPRESSOR_PREFIX = "compressor."


class CompressorWeightsError(ConfigError):
    """The evaluated compressor has parameters the checkpoint does not hold (it was trained with another)."""


# ------------------------------------------------------------------------------------------
# the compressor swap rule (also applied by VideoLLM.on_load_checkpoint)


def trained_compressor(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``model.compressor`` spec a dynvlm checkpoint was trained with (``None`` when it carries no config)."""
    config = (checkpoint.get("hyper_parameters") or {}).get("config") or {}
    spec = (config.get("model") or {}).get("compressor")
    return dict(spec) if isinstance(spec, Mapping) else None


def stale_compressor_weights(checkpoint: Mapping[str, Any], compressor_spec: Mapping[str, Any] | None,
                             compressor: Any, *, fitting: bool = False, source: str = "the checkpoint") -> list[str]:
    """Keys of ``checkpoint["state_dict"]`` to drop because the model's compressor is not the trained one.

    Args:
        checkpoint: a loaded dynvlm checkpoint (``state_dict`` and ``hyper_parameters["config"]``).
        compressor_spec: the model's ``model.compressor`` spec (``{"name": ..., **kwargs}``).
        compressor: the model's compressor module (its parameters are what must be loaded).
        fitting: ``True`` when resuming training: a swapped compressor is then an error, not a transfer.
        source: how to name the checkpoint in messages (its path).

    Returns:
        The trained compressor's weights (``compressor.*`` keys) the model's compressor does not
        have; empty when the compressor names are equal or the checkpoint carries no config
        (the ordinary loading rules apply then). Only these keys may be dropped: any other key the
        model lacks still fails the load.

    Raises:
        CompressorWeightsError: the model's compressor has parameters the checkpoint does not
            hold (it was trained with another compressor), naming them and what to do.
        ConfigError: ``fitting`` with a compressor other than the trained one.
    """
    trained = trained_compressor(checkpoint)
    new = (compressor_spec or {}).get("name")
    if trained is None or new is None or trained.get("name") == new:
        return []
    old = trained.get("name")
    if fitting:
        raise ConfigError(f"{source} was trained with compressor {old!r}; resuming training with {new!r} is not "
                          f"supported: start a new run (another name) to train {new!r}")
    state = checkpoint.get("state_dict") or {}
    own = {COMPRESSOR_PREFIX + k for k in compressor.state_dict()}
    params = [COMPRESSOR_PREFIX + n for n, _ in compressor.named_parameters()]
    missing = [k for k in params if k not in state]
    if missing:
        shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise CompressorWeightsError(
            f"compressor {new!r} has {len(missing)} parameter tensors ({shown}) that {source} does not hold: it was "
            f"trained with {old!r}. Evaluate it with a parameter-free compressor, train a model with "
            f"model.compressor.name={new}, or pass a --checkpoint trained with {new!r}")
    return [k for k in state if k.startswith(COMPRESSOR_PREFIX) and k not in own]


# ------------------------------------------------------------------------------------------
# settings: what a model was trained / is evaluated with


def setting(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``{"compressor", "tokens_per_frame", "max_tokens", "policy", "policy_keys", "label"}`` of a run config
    (``None`` for ``None``).

    ``label`` is ``"<compressor>@<M>"``, or ``"<compressor>@dynamic"`` when ``budget.tokens_per_frame``
    is unset (the budget rule ``clamp(max_tokens // T, ...)`` picks ``M``); a budget policy other
    than the default ``dynamic`` is named too (``"pool@16 (keyframes)"``, ``"pool@keyframes"``), and
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
    if not parts:
        label = f"{name}@{policy}"
    else:
        label = f"{name}@{','.join(parts)}" + ("" if policy == "dynamic" else f" ({policy})")
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


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint file as a dict, memory-mapped where the format allows (big checkpoints
    are read lazily), else read in full."""
    import torch

    # dynvlm checkpoints hold hparams and loop state (plain Python objects): not weights-only
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
        data = torch.load(str(path), map_location="cpu", weights_only=False)
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        raise ConfigError(f"--checkpoint {str(path)!r}: not a Lightning checkpoint (no state_dict)")
    return data


def trained_config(checkpoint: Mapping[str, Any], path: str | Path) -> dict[str, Any] | None:
    """The run config a checkpoint was trained with: its ``hyper_parameters["config"]``, else the
    ``config.yaml`` of its run folder (``<run>/checkpoints/<file>``), else ``None``."""
    saved = (checkpoint.get("hyper_parameters") or {}).get("config")
    if isinstance(saved, Mapping):
        return dict(saved)
    run = checkpoint_run(path)
    if (run / "config.yaml").is_file():
        loaded = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"), resolve=True)
        return loaded if isinstance(loaded, dict) else None
    return None


def checkpoint_run(path: str | Path) -> Path:
    """The run folder of a checkpoint: ``<run>`` for ``<run>/checkpoints/<file>``, else the file's folder."""
    path = Path(path)
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


# ------------------------------------------------------------------------------------------
# the command


def evaluate_cli(cfg: DictConfig | Mapping[str, Any], checkpoint: str | None = None, data: str | None = None,
                 out: str | None = None, config_path: str | None = None) -> dict[str, Any]:
    """``dynvlm eval``: evaluate ``checkpoint`` (default: the run's last) on ``data`` (default: the config's test file).

    Args:
        cfg: the loaded config (the CONFIG file plus the command line's overrides): the evaluated setting.
        checkpoint: a ``.ckpt`` written by ``dynvlm fit``.
        data: a multiple-choice file replacing ``data.test``.
        out: the results folder (default ``<run>/eval/<file stem>/<setting slug>`` (:func:`setting_slug`); for a sweep ``<checkpoint's run>/transfer``).
        config_path: the CONFIG file (named in error messages).

    Returns:
        The report written to ``eval.json`` plus ``written`` (its folder); for a config with
        ``sweep:`` the summary of :func:`dynvlm.transfer.run_transfer`.
    """
    from . import train

    cfg = OmegaConf.create(config_dict(cfg))
    if data is not None:
        if not Path(data).is_file():
            raise ConfigError(f"--data {data!r}: no such file")
        OmegaConf.update(cfg, "data.test", str(Path(data).resolve()), force_add=True)
        if (cfg.get("data") or {}).get("synth"):
            cfg.data.synth = None  # the file replaces the generated test split: nothing to generate
    test_file = test_source(cfg)
    if test_file is None:
        raise ConfigError("nothing to evaluate: pass --data FILE or set data.test (or data.synth) in the config")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ConfigError(f"--checkpoint {checkpoint!r}: no such file")
    if cfg.get("sweep"):
        from .transfer import run_transfer

        return run_transfer(cfg, checkpoint=checkpoint, out=out, config_path=config_path)
    if checkpoint is None:
        last = train.run_dir(cfg) / "checkpoints" / train.LAST
        checkpoint = str(last) if last.is_file() else None
    # each evaluated file and setting gets its own folder: the run's own predictions.jsonl is left
    # alone, and evaluating another compressor or budget does not overwrite an earlier evaluation
    evaluated = setting(config_dict(cfg))
    assert evaluated is not None
    folder = Path(out) if out else train.run_dir(cfg) / "eval" / test_file.stem / setting_slug(evaluated)
    return evaluate(cfg, checkpoint, folder)


def test_source(cfg: DictConfig | Mapping[str, Any]) -> Path | None:
    """The multiple-choice file a config tests on: ``data.test``, else its ``data.synth`` test file."""
    d = cfg.get("data") or {}
    if d.get("test"):
        return Path(str(d["test"]))
    synth = d.get("synth")
    if synth and synth.get("out") and synth.get("test", 1) != 0:
        from .data.datamodule import SYNTH_FILES

        return Path(str(synth["out"])) / SYNTH_FILES["test"]
    return None


test_source.__test__ = False  # not a pytest test when imported into a test module


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
    from .benchmarks.report import complete_report, report_markdown

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
        ``test/ceiling[/<family>]``, ...) plus ``cost``: the :data:`dynvlm.sweep.COST_COLUMNS` measured
        on the first :data:`dynvlm.sweep.COST_SAMPLES` test samples after the test loop
        (:func:`dynvlm.sweep.point_cost`, ``{}`` without test samples); the visual budget the model
        actually used (see :class:`PlanUsage`); and the trained compressor's weights that were dropped.
    """
    from . import train
    from .model import VideoLLM
    from .sweep import point_cost

    cfg = OmegaConf.create(config_dict(cfg))
    # seeded as dynvlm.train.test seeds, so weights the checkpoint does not hold get the same init
    pl.seed_everything(int(cfg.get("seed") or 0), workers=True, verbose=False)
    model = VideoLLM(cfg)
    dropped: list[str] = []
    if checkpoint is not None:
        # checked here first to name the file in the error; on_load_checkpoint applies the same rule
        stale_compressor_weights(checkpoint, config_dict(cfg)["model"]["compressor"], model.compressor,
                                 source=f"checkpoint {source!r}" if source else "the checkpoint")
        # a shallow copy: on_load_checkpoint drops the old compressor's keys from its state_dict,
        # and a sweep reuses the checkpoint for its next point
        ckpt = {**checkpoint, "state_dict": dict(checkpoint["state_dict"])}
        model.on_load_checkpoint(ckpt)
        dropped = sorted(set(checkpoint["state_dict"]) - set(ckpt["state_dict"]))
        model.load_state_dict(ckpt["state_dict"], strict=False)  # the checkpoint holds only trained weights
    model.predictions_path = predictions
    usage = PlanUsage()
    trainer = train.make_trainer(cfg, [usage], fit=False)
    results = trainer.test(model, datamodule=train.make_datamodule(cfg))
    metrics = {k: float(v) for r in results for k, v in r.items()}
    # measured the way a sweep point is (same samples, repeats and columns), so eval, transfer and
    # sweep rows compare; a few prefills of COST_SAMPLES samples: small next to the test loop
    cost = point_cost(model, config_dict(cfg))
    return {"run_dir": str(train.run_dir(cfg)), **metrics, "cost": cost}, usage.summary(), dropped


class PlanUsage(pl.Callback):
    """Records the visual budget the model used for every test sample, from what its test step recorded.

    After each test batch it reads the model's ``token_counts`` ((planned, actual) visual tokens
    per sample: the plan and what the compressor returned and the LLM saw) and ``kept_times``
    (the frames each sample kept), both set by ``VideoLLM.visual_features``: no second plan. A
    batch mixing multiple-choice and open-ended samples makes two ``visual_features`` calls; only
    the last one's samples are seen then.
    """

    def __init__(self) -> None:
        # (planned visual tokens, actual visual tokens, frames kept) per sample
        self.samples: list[tuple[int, int, int]] = []

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        """Keep (planned, actual, frames) of every sample of the batch's last ``visual_features`` call."""
        counts = list(getattr(pl_module, "token_counts", []) or [])
        times = list(getattr(pl_module, "kept_times", []) or [])
        self.samples += [(int(p), int(a), len(t)) for (p, a), t in zip(counts, times)]
        # cleared so a batch without visual samples is not counted twice
        pl_module.token_counts, pl_module.kept_times = [], []

    def summary(self) -> dict[str, Any]:
        """``{"tokens_per_frame": [distinct M], "mean_tokens_per_frame", "frames", "visual_tokens",
        "planned_tokens", "actual_tokens", "samples"}`` (this process's samples; means per sample;
        ``visual_tokens`` = ``planned_tokens``, the planned count; ``{}`` when nothing was recorded)."""
        if not self.samples:
            return {}
        n = len(self.samples)
        # every frame of a sample has the plan's M: planned = frames x M
        per_frame = [p // f for p, _, f in self.samples if f]
        return {
            "tokens_per_frame": sorted(set(per_frame)),
            "mean_tokens_per_frame": round(sum(per_frame) / len(per_frame), 3) if per_frame else None,
            "frames": round(sum(f for _, _, f in self.samples) / n, 3),
            "visual_tokens": round(sum(p for p, _, _ in self.samples) / n, 3),
            "planned_tokens": round(sum(p for p, _, _ in self.samples) / n, 3),
            "actual_tokens": round(sum(a for _, a, _ in self.samples) / n, 3),
            "samples": n,
        }


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
        used: what the model's plans used (:class:`PlanUsage`).
        dropped: the trained compressor's weights the evaluated one did not use.
        cost: the measured inference cost (:func:`dynvlm.sweep.point_cost`), ``None``: not measured.

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
        "data": str((plain.get("data") or {}).get("test") or test_source(plain)),
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
                  "Mean of the first test samples (`dynvlm.cost.measure_cost`): FLOPs by torch's FlopCounterMode, "
                  "prefill latency the median of repeats, peak memory the max.", "",
                  "| measure | value |", "|---|---|"]
        lines += [f"| {k} | {_cost_value(v)} |" for k, v in cost.items()]
    return "\n".join(lines) + "\n"


def _cost_value(value: Any) -> str:
    """A cost cell: ``—`` when not measured (``None``), large counts in scientific notation."""
    if value is None:
        return "—"
    return f"{value:.3g}" if isinstance(value, (int, float)) and abs(value) >= 1e5 else str(value)
