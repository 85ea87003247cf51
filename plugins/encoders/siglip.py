"""``siglip``: Hugging Face ``SiglipVisionModel`` as a vision encoder (no CLS token; pooling head removed)."""

from __future__ import annotations

from dynvlm import hookimpl
from dynvlm.plugins.encoders.hf_vision import SIGLIP_MEAN, SIGLIP_STD, HFVisionEncoder


class SiglipEncoder(HFVisionEncoder):
    """SigLIP ViT tower: uint8 frames -> ``[F, (S/patch)^2, C]`` tokens of ``select_layer`` (default -2).

    Preprocessing follows SigLIP's processor: resize straight to ``S x S`` (no crop), mean/std
    0.5 (or the folder's ``preprocessor_config.json``). See :class:`HFVisionEncoder` for the arguments.
    """

    model_class = "SiglipVisionModel"
    config_class = "SiglipVisionConfig"
    has_cls = False
    default_mean = SIGLIP_MEAN
    default_std = SIGLIP_STD
    default_center_crop = False
    kind_name = "encoder 'siglip'"


@hookimpl
def register_encoders(register):
    register("siglip", SiglipEncoder)
