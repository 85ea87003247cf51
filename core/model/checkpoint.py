"""Checkpoint files and the rules for loading them into a :class:`~dynvlm.model.video_llm.VideoLLM`.

- :func:`read_checkpoint`: a Lightning ``.ckpt`` as a dict; :func:`read_weights`: the state dict of a
  ``.ckpt``, ``.pt`` or ``.safetensors`` file; :func:`load_weights`: a state dict into a model.
- The compressor swap rule (:func:`stale_compressor_weights`): evaluating a checkpoint with another
  compressor than it was trained with drops the trained compressor's own weights, and refuses a new
  compressor whose parameters the checkpoint does not hold.
- :func:`trained_config` and :func:`checkpoint_run`: what a checkpoint was trained with, and where.

:func:`dynvlm.model.restore.restore` applies all of them to rebuild a trained model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn

from dynvlm.config import ConfigError

#: our entry in a Lightning checkpoint: the trainable and carried key lists, the stage name
CKPT_KEY = "dynvlm"

#: state-dict prefix of the compressor's weights in a :class:`~dynvlm.model.video_llm.VideoLLM`
COMPRESSOR_PREFIX = "compressor."


class CompressorWeightsError(ConfigError):
    """The evaluated compressor has parameters the checkpoint does not hold (it was trained with another)."""




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


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """A Lightning checkpoint file as a dict, memory-mapped where the format allows (big checkpoints
    are read lazily), else read in full.

    Raises:
        ConfigError: the file holds no ``state_dict`` mapping (not a Lightning checkpoint).
    """
    # dynvlm checkpoints hold hparams and loop state (plain Python objects): not weights-only
    try:
        data = torch.load(str(path), map_location=map_location, weights_only=False, mmap=True)
    except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
        data = torch.load(str(path), map_location=map_location, weights_only=False)
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


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """The state dict held by a Lightning ``.ckpt`` (its ``state_dict``), a ``.pt`` state dict or a ``.safetensors`` file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"stage.resume_from: checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # A Lightning checkpoint also stores loop and hparam state (plain Python objects), so the
    # weights-only unpickler cannot read it; checkpoints are files this project wrote.
    data = torch.load(str(path), map_location="cpu", weights_only=False)
    if isinstance(data, dict) and "state_dict" in data:
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise ValueError(f"{path}: not a checkpoint or state dict (expected a mapping of tensors)")
    return data


def load_weights(model: nn.Module, weights: Mapping[str, Tensor], source: str = "checkpoint",
                 optional: tuple[str, ...] = ()) -> list[str]:
    """Copy ``weights`` into ``model`` (a subset of its state dict); return the keys loaded.

    Raises ``ValueError`` naming unknown keys or mismatched shapes: a checkpoint from a
    different architecture must not load silently. Unknown keys under an ``optional`` prefix
    (e.g. ``"compressor."``: a base carries the scorer of the compressor it was trained with,
    which a fine-tune with another compressor does not have) are skipped with a warning (``rank_zero_warn``).
    """
    own = model.state_dict()
    skipped = [k for k in weights if k not in own and k.startswith(optional)]
    if skipped:
        # a warning, not INFO: a run silently dropping weights it was pointed at must be visible
        rank_zero_warn(f"{source}: {len(skipped)} weights not used by this model were skipped "
                       f"({', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''})")
        weights = {k: v for k, v in weights.items() if k not in skipped}
    unknown = [k for k in weights if k not in own]
    if unknown:
        raise ValueError(f"{source}: {len(unknown)} weights do not exist in this model, e.g. {unknown[:3]}; "
                         "was it saved from a different model config?")
    bad = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in weights if weights[k].shape != own[k].shape]
    if bad:
        raise ValueError(f"{source}: shape mismatch for {len(bad)} weights, e.g. {bad[:3]}")
    model.load_state_dict(dict(weights), strict=False)
    return list(weights)
