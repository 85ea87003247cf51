"""Training stages: which modules of a :class:`~dynvlm.model.video_llm.VideoLLM` train, and resuming from the previous stage.

=============  ========================================  =====================================
stage          trainable                                 typical data
=============  ========================================  =====================================
``pretrain``   compressor, projector                     image/video captions (alignment)
``image_sft``  encoder (at ``lr * encoder_lr_ratio``),   image instructions
               compressor, projector, llm
``video_sft``  as ``image_sft``                          video instructions
``custom``     ``stage.trainable`` (required)
=============  ========================================  =====================================

(The SFT stages train everything, the ViT at 1/5 of the learning rate, as in LLaVA-OneVision.)
``stage.trainable`` overrides the default of any stage. ``stage.resume_from`` loads the weights a
previous stage's checkpoint holds (only its trainable ones plus what it carried over), so a
chain ``pretrain -> image_sft -> video_sft`` keeps everything any stage trained.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch import nn

from dynvlm.schema import StageConfig, section

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
