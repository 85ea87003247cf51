"""Run a config: ``fit``, ``validate`` and ``test`` (what ``dynvlm fit|validate|test CONFIG`` call).

A run lives in ``<output_dir>/<name>/``: ``config.yaml`` (the resolved config), ``logs/`` (CSV
metrics and hparams, including component provenance), ``checkpoints/last.ckpt``. Re-running
``fit`` on a run whose ``last.ckpt`` exists resumes from it (an interrupted run goes on where
it stopped; a finished one returns at once). ``stage.checkpoint_every_n_steps`` sets how often
``last.ckpt`` is written during training (default: at each epoch end and when training ends);
Ctrl-C in a single-process run also writes it at the step reached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from dynvlm.config import to_yaml
from dynvlm.model.video_llm import VideoLLM
from dynvlm.util.configs import config_dict
from dynvlm.util.paths import LAST_CHECKPOINT, last_checkpoint, run_dir


def make_datamodule(cfg: DictConfig | Mapping[str, Any]) -> pl.LightningDataModule:
    """The data side's ``VideoDataModule(data, budget)`` (imported on use)."""
    from dynvlm.data import VideoDataModule

    return VideoDataModule(cfg.get("data") or {}, cfg.get("budget") or {})


def make_trainer(cfg: DictConfig | Mapping[str, Any], callbacks: Sequence[pl.Callback] = (), *, fit: bool) -> pl.Trainer:
    """A ``Trainer`` from ``cfg.trainer`` plus the run's logger and (for ``fit``) checkpointing.

    ``trainer.*`` keys are ``Trainer`` keyword arguments as given (strategy, devices, precision, ...).
    ``logger: false`` turns logging off; any other value gets a CSV logger under the run folder.
    """
    kwargs = dict(cfg.get("trainer") or {})
    out = run_dir(cfg)
    kwargs.setdefault("default_root_dir", str(out))
    if kwargs.get("logger", True) is not False:
        kwargs["logger"] = pl.loggers.CSVLogger(save_dir=str(out), name="logs")  # version_N per invocation
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


def fit(cfg: DictConfig | Mapping[str, Any], datamodule: pl.LightningDataModule | None = None,
        callbacks: Sequence[pl.Callback] = ()) -> dict[str, Any]:
    """Train the run ``cfg`` describes (resuming from its ``last.ckpt`` when one exists).

    Args:
        cfg: a loaded config (``dynvlm.load_config``) or a plain mapping of the same shape.
        datamodule: overrides the one built from ``cfg.data`` (tests, notebooks).
        callbacks: extra Lightning callbacks.

    Returns:
        ``{"run_dir", "checkpoint", "resumed_from", "global_step", "interrupted", **logged metrics}``.
    """
    cfg = _prepare(cfg)
    out = run_dir(cfg)
    last = out / "checkpoints" / LAST_CHECKPOINT
    resume = str(last) if last.is_file() else None
    model = VideoLLM(cfg)
    trainer = make_trainer(cfg, callbacks, fit=True)
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(config_dict(cfg)))
    trainer.fit(model, datamodule=datamodule or make_datamodule(cfg), ckpt_path=resume)
    if trainer.checkpoint_callback is not None:
        trainer.save_checkpoint(str(last))  # the final state, even when max_steps ends mid-epoch
    return {
        "run_dir": str(out),
        "checkpoint": str(last) if last.is_file() else None,
        "resumed_from": resume,
        "global_step": int(trainer.global_step),
        "interrupted": bool(trainer.interrupted),
        "world_size": int(trainer.world_size),
        **_metrics(trainer),
    }


def _evaluate(kind: str, cfg: DictConfig | Mapping[str, Any], checkpoint: str | None,
              datamodule: pl.LightningDataModule | None, predictions: str | Path | None = None) -> dict[str, Any]:
    cfg = _prepare(cfg)
    model = VideoLLM(cfg)
    ckpt = checkpoint
    if ckpt is None:
        last = last_checkpoint(cfg)
        ckpt = str(last) if last.is_file() else None
    if kind == "test":
        model.predictions_path = Path(predictions) if predictions else run_dir(cfg) / "predictions.jsonl"
    trainer = make_trainer(cfg, fit=False)
    dm = datamodule or make_datamodule(cfg)
    run = trainer.test if kind == "test" else trainer.validate
    results = run(model, datamodule=dm, ckpt_path=ckpt)
    metrics = {k: float(v) for r in results for k, v in r.items()}
    return {"run_dir": str(run_dir(cfg)), "checkpoint": ckpt, **_metrics(trainer), **metrics}


def validate(cfg: DictConfig | Mapping[str, Any], checkpoint: str | None = None,
             datamodule: pl.LightningDataModule | None = None) -> dict[str, Any]:
    """Validation loss (and multiple-choice accuracy when samples carry options) of ``checkpoint``
    (default: the run's ``last.ckpt`` when it exists, else the weights the config builds)."""
    return _evaluate("validate", cfg, checkpoint, datamodule)


def test(cfg: DictConfig | Mapping[str, Any], checkpoint: str | None = None,
         datamodule: pl.LightningDataModule | None = None, predictions: str | Path | None = None) -> dict[str, Any]:
    """Multiple-choice accuracy (overall and per category, ``test/acc/<category>``) of ``checkpoint``, and
    for open-ended samples the exact-match rate of generated answers (``test/exact_match[/<category>]``);
    per-question predictions go to ``predictions`` (default ``<run>/predictions.jsonl``)."""
    return _evaluate("test", cfg, checkpoint, datamodule, predictions)


test.__test__ = False  # not a pytest test when imported into a test module
