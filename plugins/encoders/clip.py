"""``clip``: Hugging Face ``CLIPVisionModel`` as a vision encoder (CLS token dropped)."""

from __future__ import annotations

from dynvlm import hookimpl
from dynvlm.plugins.encoders.hf_vision import CLIP_MEAN, CLIP_STD, HFVisionEncoder


class CLIPEncoder(HFVisionEncoder):
    """CLIP ViT tower: uint8 frames -> ``[F, (S/patch)^2, C]`` tokens of ``select_layer`` (default -2).

    Preprocessing: shorter side to ``S``, centre crop, CLIP mean/std (or the folder's
    ``preprocessor_config.json``). See :class:`HFVisionEncoder` for the arguments.
    """

    model_class = "CLIPVisionModel"
    config_class = "CLIPVisionConfig"
    has_cls = True
    default_mean = CLIP_MEAN
    default_std = CLIP_STD
    default_center_crop = True
    kind_name = "encoder 'clip'"


@hookimpl
def register_encoders(register):
    register("clip", CLIPEncoder)
