"""Training stages: which modules of a :class:`~dynvlm.model.VideoLLM` train, and resuming from the previous stage.

=============  ========================================  =====================================
stage          trainable                                 typical data
=============  ========================================  =====================================
``pretrain``   compressor, projector                     image/video captions (alignment)
``image_sft``  encoder (at ``lr * encoder_lr_ratio``),   image instructions
               compressor, projector, llm
``video_sft``  as ``image_sft``                          video instructions
``custom``     ``stage.trainable`` (required)
=============  ========================================  =====================================

(DESIGN.md section 4: the SFT stages train everything, the ViT at 1/5 lr.)
``stage.trainable`` overrides the default of any stage. ``stage.resume_from`` loads the weights a
previous stage's checkpoint holds (only its trainable ones plus what it carried over), so a
chain ``pretrain -> image_sft -> video_sft`` keeps everything any stage trained.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn

from .schema import StageConfig, section

MODULES = ("encoder", "compressor", "projector", "llm")
DEFAULT_TRAINABLE: dict[str, tuple[str, ...]] = {
    "pretrain": ("compressor", "projector"),
    "image_sft": MODULES,  # LLaVA-OneVision-style SFT: the whole model, the ViT at a fraction of lr
    "video_sft": MODULES,
}

log = logging.getLogger(__name__)


def stage_config(stage: StageConfig | Mapping[str, Any] | None) -> StageConfig:
    """A :class:`StageConfig` from a dataclass, a mapping or ``None`` (the default ``video_sft``)."""
    cfg = section(StageConfig, stage, "stage")
    if cfg.trainable is not None:
        cfg.trainable = list(cfg.trainable)
    return cfg


def trainable_modules(stage: StageConfig) -> tuple[str, ...]:
    """Names (among :data:`MODULES`) of the modules ``stage`` trains."""
    if stage.trainable is not None:
        bad = [m for m in stage.trainable if m not in MODULES]
        if bad:
            raise ValueError(f"stage.trainable: unknown module {bad[0]!r}; modules: {', '.join(MODULES)}")
        return tuple(m for m in MODULES if m in stage.trainable)
    if stage.name not in DEFAULT_TRAINABLE:
        raise ValueError(f"stage {stage.name!r} needs stage.trainable (a subset of {', '.join(MODULES)})")
    return DEFAULT_TRAINABLE[stage.name]


def apply_stage(model: nn.Module, stage: StageConfig) -> tuple[str, ...]:
    """Set ``requires_grad`` on ``model.<module>`` for each of :data:`MODULES`; return the trainable ones."""
    names = trainable_modules(stage)
    for name in MODULES:
        getattr(model, name).requires_grad_(name in names)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"stage {stage.name!r}: the modules {', '.join(names) or '(none)'} have no parameters "
                         "to train (a parameter-free compressor such as 'pool' trains nothing on its own)")
    return names


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
