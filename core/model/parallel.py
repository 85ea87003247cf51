"""How a model splits for sharding and recomputation: its repeated layers, activation checkpointing, and the
``trainer.precision`` values that train in a half dtype.

Used by the strategy builder (:mod:`dynvlm.run.strategy`: the FSDP units) and the memory plan
(:mod:`dynvlm.measure.memory_plan`: what one unit holds), so both see the same layers and precisions.
"""

from __future__ import annotations

import torch
from torch import nn

#: ``trainer.precision`` values that keep fp32 weights and compute in a half dtype
MIXED = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16, "bf16": torch.bfloat16, "16": torch.float16}
#: ``trainer.precision`` values that train in a half dtype throughout
TRUE_HALF = {"bf16-true": torch.bfloat16, "16-true": torch.float16}


def layer_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The layer classes of the model: each Hugging Face model's ``_no_split_modules`` (e.g.
    ``Qwen2DecoderLayer``, ``CLIPEncoderLayer``) that occur in ``model`` as items of a layer list."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return {type(m) for lst in model.modules() if isinstance(lst, nn.ModuleList) for m in lst
            if type(m).__name__ in names}


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Turn on gradient checkpointing in every Hugging Face model inside ``model``; returns how many."""
    n = 0
    for module in model.modules():
        if hasattr(module, "activation_checkpointing_enable"):  # transformers >= 5 name
            module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif hasattr(module, "gradient_checkpointing_enable") and getattr(module, "supports_gradient_checkpointing", False):
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            continue
        n += 1
    return n


def layer_parameter_counts(model: nn.Module) -> tuple[int, list[int]]:
    """``(parameters outside the layers, parameters of each layer)``: the FSDP root unit and the per-layer
    units of ``wrap: layers`` (:func:`layer_classes`)."""
    classes = tuple(layer_classes(model))
    layers = [m for m in model.modules() if classes and isinstance(m, classes)]
    inside = {id(p) for m in layers for p in m.parameters()}
    root = sum(p.numel() for p in model.parameters() if id(p) not in inside)
    return root, [sum(p.numel() for p in m.parameters()) for m in layers]
