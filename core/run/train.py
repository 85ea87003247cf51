"""Run a config: ``fit``, ``validate`` and ``test`` (what ``dynvlm fit|validate|test CONFIG`` call).

A run lives in ``<output_dir>/<name>/``: ``config.yaml`` (the resolved config), ``logs/`` (CSV
metrics and hparams, including component provenance), ``checkpoints/last.ckpt``. Re-running
``fit`` on a run whose ``last.ckpt`` exists resumes from it (an interrupted run goes on where
it stopped; a finished one returns at once). ``stage.checkpoint_every_n_steps`` sets how often
``last.ckpt`` is written during training (default: at each epoch end and when training ends);
Ctrl-C in a single-process run also writes it at the step reached.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.strategies import FSDPStrategy

from dynvlm.config import ConfigError, to_yaml
from dynvlm.model.checkpoint import IncompleteCheckpoint, read_checkpoint, read_sharded_checkpoint
from dynvlm.model.video_llm import VideoLLM
from dynvlm.run.strategy import make_strategy, prepare_precision
from dynvlm.schema import OptimConfig
from dynvlm.util.configs import config_dict
from dynvlm.util.fingerprint import changed_keys, config_fingerprint, read_fingerprint, result_keys, write_fingerprint
from dynvlm.util.paths import LAST_CHECKPOINT, last_checkpoint, run_dir, shown

log = logging.getLogger(__name__)


def make_datamodule(cfg: DictConfig | Mapping[str, Any]) -> pl.LightningDataModule:
    """The data side's ``VideoDataModule(data, budget)`` (imported on use)."""
    from dynvlm.data import VideoDataModule

    return VideoDataModule(cfg.get("data") or {}, cfg.get("budget") or {})


def make_trainer(cfg: DictConfig | Mapping[str, Any], callbacks: Sequence[pl.Callback] = (), *, fit: bool,
                 model: VideoLLM | None = None) -> pl.Trainer:
    """A ``Trainer`` from ``cfg.trainer`` plus the run's logger and (for ``fit``) checkpointing.

    ``trainer.*`` keys are ``Trainer`` keyword arguments as given (devices, precision, ...), except
    ``logger``: a tracker name or a list of them (:func:`make_loggers`), and ``strategy`` given as a
    mapping: FSDP / DDP / DeepSpeed settings built for ``model`` (:func:`dynvlm.run.strategy.make_strategy`).
    """
    kwargs = dict(cfg.get("trainer") or {})
    if "strategy" in kwargs:
        grad_clip = (cfg.get("optim") or {}).get("grad_clip", OptimConfig().grad_clip)
        kwargs["strategy"] = make_strategy(kwargs, model, grad_clip)
    out = run_dir(cfg)
    kwargs.setdefault("default_root_dir", str(out))
    # the model summary table goes to the run's log (fit logs it), not to the console of every sweep point
    kwargs.setdefault("enable_model_summary", False)
    kwargs["logger"] = make_loggers(kwargs.get("logger", True), cfg)
    cbs = list(callbacks)
    if fit and kwargs.get("enable_checkpointing", True):
        stage = cfg.get("stage") or {}
        cbs.append(pl.callbacks.ModelCheckpoint(
            dirpath=str(out / "checkpoints"), save_last=True, save_top_k=0,
            every_n_train_steps=stage.get("checkpoint_every_n_steps"),
        ))
        cbs.append(SaveOnInterrupt(out / "checkpoints" / LAST_CHECKPOINT))
    elif not fit:
        kwargs["enable_checkpointing"] = False
    return pl.Trainer(callbacks=cbs, **kwargs)


#: ``trainer.logger`` names -> (Lightning logger class, the package it needs, the pip name)
TRACKERS = {
    "csv": ("CSVLogger", None, None),
    "tensorboard": ("TensorBoardLogger", ("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": ("WandbLogger", ("wandb",), "wandb"),
    "mlflow": ("MLFlowLogger", ("mlflow",), "mlflow"),
}


def make_loggers(spec: Any, cfg: Mapping[str, Any]) -> list[Any] | bool:
    """The Lightning loggers ``trainer.logger`` names, each writing under the run folder.

    Args:
        spec: ``false`` (none), ``true`` or unset (``csv``), a name of :data:`TRACKERS`, or a list of names.
        cfg: the run config: the run's name and config fingerprint become the trackers' run name and tags.

    Raises:
        ConfigError: an unknown name (listing the valid ones), or a tracker whose package is not
            installed (naming the package to install).
    """
    import importlib.util

    if spec is False:
        return False
    names = ["csv"] if spec in (True, None) else [spec] if isinstance(spec, str) else list(spec)
    out = run_dir(cfg)
    data = config_dict(cfg)
    run_name, fingerprint = str(cfg.get("name") or "run"), config_fingerprint(data)
    loggers = []
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"trainer.logger: unknown tracker {name!r}; valid: {', '.join(TRACKERS)}, false, or a list")
        cls_name, modules, pip_name = TRACKERS[name]
        if modules and not any(importlib.util.find_spec(m) for m in modules):
            raise ConfigError(f"trainer.logger: {name!r} needs the {pip_name} package, which is not installed "
                              f"(pip install {pip_name}); installed trackers work without it: csv")
        cls = getattr(pl.loggers, cls_name)
        if name == "csv":
            loggers.append(cls(save_dir=str(out), name="logs"))  # version_N per invocation
        elif name == "tensorboard":
            loggers.append(cls(save_dir=str(out), name="tensorboard", default_hp_metric=False))
        elif name == "wandb":
            loggers.append(cls(save_dir=str(out), name=run_name, tags=[run_name, fingerprint]))
        else:
            loggers.append(cls(run_name=run_name, tracking_uri=f"file:{(out / 'mlruns').resolve()}",
                               tags={"run": run_name, "fingerprint": fingerprint}))
    for lg in loggers:
        if name_of(lg) in ("csv", "tensorboard"):
            lg.log_hyperparams({"run": run_name, "fingerprint": fingerprint})
    return loggers or False


def name_of(logger: Any) -> str:
    """The :data:`TRACKERS` name of a Lightning logger instance (``""`` for another class)."""
    return next((n for n, (cls, _, _) in TRACKERS.items() if type(logger).__name__ == cls), "")


class SaveOnInterrupt(pl.Callback):
    """On Ctrl-C (``KeyboardInterrupt``), write ``last.ckpt`` at the current step so a re-run resumes there.

    Only in single-process runs: saving is collective under DDP and the other ranks may be gone.
    Other exceptions (bugs) leave the last periodic checkpoint in place.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt) and trainer.world_size == 1 and trainer.global_step > 0:
            trainer.save_checkpoint(str(self.path))


def _prepare(cfg: DictConfig | Mapping[str, Any]) -> DictConfig:
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    pl.seed_everything(int(cfg.get("seed") or 0), workers=True, verbose=False)
    return cfg


def _metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if isinstance(v, torch.Tensor) and v.numel() == 1}


class StaleRunError(ConfigError):
    """A run folder (or sweep point) was made with another config than the one given now."""


def set_aside(folder: Path, fingerprint: str) -> Path:
    """Rename a stale run ``folder`` to ``<folder>.stale-<fingerprint>`` (nothing is deleted); return the new path."""
    target = folder.with_name(f"{folder.name}.stale-{fingerprint}")
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}.stale-{fingerprint}-{n}")
    folder.rename(target)
    return target


def check_run_folder(cfg: Mapping[str, Any], rerun_changed: bool = False) -> None:
    """Refuse to resume a run folder whose checkpoint was made with another config.

    The folder's ``fingerprint.json`` (else its ``config.yaml``) is compared with ``cfg`` over the
    keys that can change results (:func:`dynvlm.util.fingerprint.result_keys`). With
    ``rerun_changed`` a changed run is set aside (:func:`set_aside`) and trained anew instead.

    Raises:
        StaleRunError: the configs differ; the message names the keys and the ways forward.
    """
    out = run_dir(cfg)
    if not (out / "checkpoints" / LAST_CHECKPOINT).exists():
        return
    recorded = read_fingerprint(out)
    if recorded is None and (out / "config.yaml").is_file():
        old = OmegaConf.to_container(OmegaConf.load(out / "config.yaml"), resolve=True)
        recorded = (config_fingerprint(old), result_keys(old)) if isinstance(old, dict) else None
    if recorded is None:
        return
    changes = changed_keys(recorded[1], cfg)
    if not changes:
        return
    if rerun_changed:
        moved = set_aside(out, recorded[0])
        log.warning("%s was made with another config; set aside as %s, training anew", shown(out), shown(moved))
        return
    raise StaleRunError(
        f"{shown(out)} holds a run made with another config, and resuming it would mix the two. Changed: "
        f"{'; '.join(changes[:8])}{' ...' if len(changes) > 8 else ''}. Give the run another name "
        "(name=...), or re-run with --rerun-changed to set the old run aside and train anew")


def fit(cfg: DictConfig | Mapping[str, Any], datamodule: pl.LightningDataModule | None = None,
        callbacks: Sequence[pl.Callback] = (), rerun_changed: bool = False) -> dict[str, Any]:
    """Train the run ``cfg`` describes (resuming from its ``last.ckpt`` when one exists).

    Args:
        cfg: a loaded config (``dynvlm.load_config``) or a plain mapping of the same shape.
        datamodule: overrides the one built from ``cfg.data`` (tests, notebooks).
        callbacks: extra Lightning callbacks.
        rerun_changed: when the run folder was made with another config, set it aside and train
            anew instead of refusing (:func:`check_run_folder`).

    Returns:
        ``{"run_dir", "checkpoint", "resumed_from", "global_step", "interrupted", "fingerprint",
        **logged metrics}``.
    """
    cfg = _prepare(cfg)
    data = config_dict(cfg)
    check_run_folder(data, rerun_changed)
    out = run_dir(cfg)
    last = out / "checkpoints" / LAST_CHECKPOINT
    resume = str(last) if last.exists() else None  # a file, or a folder of shards (FSDP state_dict: sharded)
    model = VideoLLM(cfg)
    prepare_precision(model, cfg.get("trainer") or {})
    trainer = make_trainer(cfg, callbacks, fit=True, model=model)
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(data))
        write_fingerprint(out, data)
    if resume is not None:
        _check_before_lightning(model, resume)
    log.info("%s\n%s", shown(out), pl.utilities.model_summary.ModelSummary(model, max_depth=1))
    trainer.fit(model, datamodule=datamodule or make_datamodule(cfg), ckpt_path=resume, weights_only=True)
    if trainer.checkpoint_callback is not None:
        trainer.save_checkpoint(str(last))  # the final state, even when max_steps ends mid-epoch
    return {
        "run_dir": str(out),
        "checkpoint": str(last) if last.exists() else None,
        "resumed_from": resume,
        "global_step": int(trainer.global_step),
        "interrupted": bool(trainer.interrupted),
        "world_size": int(trainer.world_size),
        "fingerprint": config_fingerprint(data),
        **_metrics(trainer),
    }


def _check_before_lightning(model: VideoLLM, path: str) -> None:
    """Read ``path`` weights-only and check that it fits ``model`` (the rules of ``restore``), so that
    a file with code in it, or one that is empty, partial or not Lightning's, is refused with its
    name before Lightning reads it."""
    data = read_sharded_checkpoint(path) if Path(path).is_dir() else read_checkpoint(path)
    try:
        model.on_load_checkpoint({**data, "state_dict": dict(data["state_dict"])})
    except IncompleteCheckpoint as exc:
        raise IncompleteCheckpoint(str(exc).replace("the checkpoint", f"checkpoint {path!r}", 1)) from None
    if "pytorch-lightning_version" not in data:
        raise ConfigError(f"checkpoint {path!r}: not a Lightning checkpoint written by dynvlm fit (no loop state); "
                          "evaluate plain weights with dynvlm eval, or load them with stage.resume_from")


def _load_sharded(model: VideoLLM, path: str) -> None:
    """Load the weights of the sharded checkpoint folder ``path`` (:func:`read_checkpoint` assembles them
    on the CPU) into ``model``, as ``restore`` does. Only FSDP's own loading reads such a folder: any
    other strategy would hand the folder to ``torch.load``."""
    data = read_checkpoint(path)
    model.on_load_checkpoint(data)  # drops a swapped compressor's weights; the fit was checked before
    model.load_state_dict(data["state_dict"], strict=False)


def _evaluate(kind: str, cfg: DictConfig | Mapping[str, Any], checkpoint: str | None,
              datamodule: pl.LightningDataModule | None, predictions: str | Path | None = None) -> dict[str, Any]:
    cfg = _prepare(cfg)
    model = VideoLLM(cfg)
    prepare_precision(model, cfg.get("trainer") or {})
    ckpt = checkpoint
    if ckpt is None:
        last = last_checkpoint(cfg)
        ckpt = str(last) if last.exists() else None
    if kind == "test":
        model.predictions_path = Path(predictions) if predictions else run_dir(cfg) / "predictions.jsonl"
    trainer = make_trainer(cfg, fit=False, model=model)
    dm = datamodule or make_datamodule(cfg)
    run = trainer.test if kind == "test" else trainer.validate
    ckpt_path = ckpt
    if ckpt is not None:
        _check_before_lightning(model, ckpt)
        if Path(ckpt).is_dir() and not isinstance(trainer.strategy, FSDPStrategy):
            _load_sharded(model, ckpt)
            ckpt_path = None
    results = run(model, datamodule=dm, ckpt_path=ckpt_path, weights_only=True, verbose=False)
    metrics = {k: float(v) for r in results for k, v in r.items()}
    return {"run_dir": str(run_dir(cfg)), "checkpoint": ckpt, **_metrics(trainer), **metrics}


def validate(cfg: DictConfig | Mapping[str, Any], checkpoint: str | None = None,
             datamodule: pl.LightningDataModule | None = None) -> dict[str, Any]:
    """Validation loss (and multiple-choice accuracy when samples carry options) of ``checkpoint``, a file
    or a sharded checkpoint folder (default: the run's ``last.ckpt`` when it exists, else the weights the
    config builds)."""
    return _evaluate("validate", cfg, checkpoint, datamodule)


def test(cfg: DictConfig | Mapping[str, Any], checkpoint: str | None = None,
         datamodule: pl.LightningDataModule | None = None, predictions: str | Path | None = None) -> dict[str, Any]:
    """Multiple-choice accuracy (overall and per category, ``test/acc/<category>``) of ``checkpoint`` (a
    file or a sharded checkpoint folder; default as :func:`validate`), and
    for open-ended samples the exact-match rate of generated answers (``test/exact_match[/<category>]``);
    per-question predictions go to ``predictions`` (default ``<run>/predictions.jsonl``)."""
    return _evaluate("test", cfg, checkpoint, datamodule, predictions)


test.__test__ = False  # not a pytest test when imported into a test module
