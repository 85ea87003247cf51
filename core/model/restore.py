"""Restoring a trained model for evaluation: one rule for ``dynvlm eval``, sweeps, transfer and the
lmms-eval bridge."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from dynvlm.model.checkpoint import IncompleteCheckpoint, stale_compressor_weights
from dynvlm.model.video_llm import VideoLLM
from dynvlm.util.configs import config_dict


def restore(cfg: DictConfig | Mapping[str, Any], checkpoint: Mapping[str, Any] | None,
            source: str | None = None) -> tuple[VideoLLM, list[str]]:
    """The model ``cfg`` describes with ``checkpoint``'s weights loaded: ``(model, dropped)``.

    The global seed is set from ``cfg["seed"]`` first, as ``dynvlm test`` does, so weights the
    checkpoint does not hold (frozen parts loaded from ``stage.resume_from`` aside) get the same
    initialisation in every caller. The checkpoint is checked against the compressor swap rule
    (:func:`~dynvlm.model.checkpoint.stale_compressor_weights`) before anything loads, naming
    ``source`` in errors; ``dropped`` lists the trained compressor's weights the model does not use.
    A checkpoint that lacks weights the model needs, or holds weights it does not have, is refused
    (:func:`~dynvlm.model.checkpoint.check_checkpoint_fits`).

    Args:
        cfg: the evaluation-time run config (its compressor and budget may differ from the trained ones).
        checkpoint: a checkpoint read by :func:`~dynvlm.model.checkpoint.read_checkpoint` (not
            modified), or ``None`` for the config's own weights.
        source: the checkpoint's path, for messages.
    """
    data = config_dict(cfg)
    pl.seed_everything(int(data.get("seed") or 0), workers=True, verbose=False)
    model = VideoLLM(data)
    if checkpoint is None:
        return model, []
    stale_compressor_weights(checkpoint, data["model"]["compressor"], model.compressor,
                             source=f"checkpoint {source!r}" if source else "the checkpoint")
    # a shallow copy: on_load_checkpoint drops the old compressor's keys from its state_dict, and a
    # sweep reuses the checkpoint for its next point
    ckpt = {**checkpoint, "state_dict": dict(checkpoint["state_dict"])}
    try:
        model.on_load_checkpoint(ckpt)
    except IncompleteCheckpoint as exc:
        raise IncompleteCheckpoint(str(exc).replace("the checkpoint", f"checkpoint {source!r}", 1)
                                   if source else str(exc)) from None
    dropped = sorted(set(checkpoint["state_dict"]) - set(ckpt["state_dict"]))
    model.load_state_dict(ckpt["state_dict"], strict=False)  # checkpoints hold only the trained weights
    return model, dropped
