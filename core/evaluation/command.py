"""``dynvlm eval CONFIG [key=value ...] [--checkpoint CKPT] [--data FILE]``: one evaluation, or a
transfer sweep when the config has ``sweep:`` (:mod:`dynvlm.evaluation.evaluate`,
:mod:`dynvlm.evaluation.transfer`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dynvlm.config import ConfigError
from dynvlm.evaluation.evaluate import evaluate, setting, setting_slug
from dynvlm.evaluation.transfer import run_transfer
from dynvlm.model.checkpoint import checkpoint_missing
from dynvlm.util.configs import config_dict
from dynvlm.util.paths import last_checkpoint, run_dir, test_file


def evaluate_cli(cfg: DictConfig | Mapping[str, Any], checkpoint: str | None = None, data: str | None = None,
                 out: str | None = None, config_path: str | None = None) -> dict[str, Any]:
    """``dynvlm eval``: evaluate ``checkpoint`` (default: the run's last) on ``data`` (default: the config's test file).

    Args:
        cfg: the loaded config (the CONFIG file plus the command line's overrides): the evaluated setting.
        checkpoint: a ``.ckpt`` written by ``dynvlm fit``: a file, or the folder FSDP writes with
            ``trainer.strategy.state_dict: sharded`` (:func:`~dynvlm.model.checkpoint.read_checkpoint`).
        data: a multiple-choice file replacing ``data.test``.
        out: the results folder (default ``<run>/eval/<file stem>/<setting slug>`` (:func:`setting_slug`); for a sweep ``<checkpoint's run>/transfer``).
        config_path: the CONFIG file (named in error messages).

    Returns:
        The report written to ``eval.json`` plus ``written`` (its folder); for a config with
        ``sweep:`` the summary of :func:`dynvlm.evaluation.transfer.run_transfer`.
    """
    cfg = OmegaConf.create(config_dict(cfg))
    if data is not None:
        if not Path(data).is_file():
            raise ConfigError(f"--data {data!r}: no such file")
        OmegaConf.update(cfg, "data.test", str(Path(data).resolve()), force_add=True)
        if (cfg.get("data") or {}).get("synth"):
            cfg.data.synth = None  # the file replaces the generated test split: nothing to generate
    tested = test_file(cfg)
    if tested is None:
        raise ConfigError("nothing to evaluate: pass --data FILE or set data.test (or data.synth) in the config")
    if checkpoint is not None and (why := checkpoint_missing(checkpoint)) is not None:
        raise ConfigError(f"--checkpoint {checkpoint!r}: {why}")
    if cfg.get("sweep"):
        return run_transfer(cfg, checkpoint=checkpoint, out=out, config_path=config_path)
    if checkpoint is None:
        last = last_checkpoint(cfg)
        # exists, not checkpoint_exists: a damaged last.ckpt folder must fail naming what it lacks, not
        # quietly give way to the config's own weights
        checkpoint = str(last) if last.exists() else None
    # each evaluated file and setting gets its own folder: the run's own predictions.jsonl is left
    # alone, and evaluating another compressor or budget does not overwrite an earlier evaluation
    evaluated = setting(config_dict(cfg))
    assert evaluated is not None
    folder = Path(out) if out else run_dir(cfg) / "eval" / tested.stem / setting_slug(evaluated)
    return evaluate(cfg, checkpoint, folder)
