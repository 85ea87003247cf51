"""Rebuilding a dynvlm checkpoint for evaluation outside Lightning, with budget/compressor overrides.

Kept free of lmms-eval imports so it is usable (and tested) in the main environment;
:mod:`dynvlm.lmms.model` serves the loaded model to lmms-eval.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dynvlm.config import load_config
from dynvlm.model.checkpoint import checkpoint_exists, checkpoint_missing, read_checkpoint
from dynvlm.model.restore import restore
from dynvlm.model.video_llm import VideoLLM
from dynvlm.util.configs import config_dict

log = logging.getLogger("dynvlm.lmms")

BUDGET_KEYS = ("tokens_per_frame", "max_tokens", "min_tokens_per_frame", "max_frames", "fps")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names its path."""


def _none(value: Any) -> Any:
    return None if isinstance(value, str) and value.lower() in ("none", "null", "dynamic", "") else value


def resolve_config(config: dict[str, Any], compressor: str | None = None, backend: str | None = None,
                   overrides: dict[str, Any] | None = None, **budget: Any) -> dict[str, Any]:
    """A checkpoint's run config with the bridge's ``model_args`` applied (a new dict).

    Args:
        config: the resolved run config saved in the checkpoint.
        compressor: a compressor name replacing ``model.compressor`` (its kwargs kept only when the
            name is unchanged).
        backend: ``data.backend`` for the video reader.
        overrides: dotted run-config keys -> values.
        budget: any of :data:`BUDGET_KEYS` (``None`` leaves the saved value).
    """
    cfg = OmegaConf.create(config)
    if compressor is not None and compressor != cfg.model.compressor.get("name"):
        cfg.model.compressor = {"name": compressor}
    for key, value in budget.items():
        if key not in BUDGET_KEYS:
            raise ValueError(f"unknown budget key {key!r}; valid: {', '.join(BUDGET_KEYS)}")
        if value is not None:
            OmegaConf.update(cfg, f"budget.{key}", _none(value), force_add=True)
    if backend is not None:
        OmegaConf.update(cfg, "data.backend", backend, force_add=True)
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, _none(value), force_add=True)
    return config_dict(cfg)


def load_checkpoint(path: str | Path, map_location: str = "cpu", **settings: Any) -> VideoLLM:
    """A :class:`VideoLLM` rebuilt from a dynvlm checkpoint's config (with ``settings`` applied, see
    :func:`resolve_config`) and loaded with its weights, in eval mode.

    Args:
        path: a dynvlm checkpoint: a ``.ckpt`` file, or the folder FSDP writes with
            ``trainer.strategy.state_dict: sharded`` (read by :func:`~dynvlm.model.checkpoint.read_checkpoint`).
        map_location: where checkpoint tensors are loaded.
        settings: the overrides of :func:`resolve_config`.

    Returns:
        The model, in eval mode.

    Raises:
        CheckpointError: naming ``path`` when it is missing or not a dynvlm checkpoint.
    """

    p = Path(str(path)).expanduser()
    if (why := checkpoint_missing(p)) is not None:
        raise CheckpointError(f"dynvlm checkpoint {str(path)!r}: {why}")
    try:
        ckpt = read_checkpoint(p, map_location)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a corrupt file
        raise CheckpointError(f"dynvlm checkpoint {str(p)!r}: not a readable checkpoint ({exc})") from exc
    saved = (ckpt.get("hyper_parameters") or {}).get("config") if isinstance(ckpt, dict) else None
    if not saved or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"dynvlm checkpoint {str(p)!r}: no state_dict and hyper_parameters['config'] "
                              "(not a checkpoint written by dynvlm fit)")
    cfg = resolve_config(dict(saved), **settings)
    resume = (cfg.get("stage") or {}).get("resume_from")
    if resume and not checkpoint_exists(resume):
        # the checkpoint carries every weight it loaded from the previous stage
        log.info("stage.resume_from %s is not here; its weights come from the checkpoint", resume)
        cfg["stage"]["resume_from"] = None
    try:
        model, _ = restore(cfg, ckpt, source=str(p))
    except Exception as exc:
        raise CheckpointError(f"dynvlm checkpoint {str(p)!r}: cannot rebuild its model ({exc})") from exc
    return model.eval()


def load_model(checkpoint: str | Path | None = None, config: str | Path | None = None, map_location: str = "cpu",
               **settings: Any) -> VideoLLM:
    """The model ``lmms-eval --model dynvlm`` serves, as ``dynvlm eval CONFIG --checkpoint C`` builds it.

    Args:
        checkpoint: a dynvlm ``.ckpt`` (a file or a sharded checkpoint folder); without ``config`` its
            saved config rebuilds the model (:func:`load_checkpoint`).
        config: a run config file (``base:`` followed): the evaluated setting. With a checkpoint, its
            weights are loaded into that model under the compressor swap rule of ``dynvlm eval``;
            without one, the config's own weights are used (``stage.resume_from``, else its init).
        map_location: where checkpoint tensors are loaded.
        settings: the overrides of :func:`resolve_config` (compressor, budget keys, backend, overrides).

    Raises:
        CheckpointError: naming the checkpoint or config that cannot be used.
    """
    if config is None:
        if checkpoint is None:
            raise CheckpointError("dynvlm needs model_args checkpoint=PATH, config=PATH, or both")
        return load_checkpoint(checkpoint, map_location, **settings)
    if not Path(str(config)).expanduser().is_file():
        raise CheckpointError(f"dynvlm config {str(config)!r}: no such file")
    cfg = resolve_config(config_dict(load_config(Path(str(config)).expanduser())), **settings)
    ckpt = None
    if checkpoint is not None:
        if (why := checkpoint_missing(Path(str(checkpoint)).expanduser())) is not None:
            raise CheckpointError(f"dynvlm checkpoint {str(checkpoint)!r}: {why}")
        ckpt = read_checkpoint(Path(str(checkpoint)).expanduser(), map_location)
    try:
        model, _ = restore(cfg, ckpt, source=str(checkpoint) if checkpoint else None)  # dynvlm eval's rule and seed
    except Exception as exc:
        raise CheckpointError(f"dynvlm config {str(config)!r}"
                              f"{f' with checkpoint {str(checkpoint)!r}' if checkpoint else ''}: cannot build its model ({exc})") from exc
    return model.eval()
