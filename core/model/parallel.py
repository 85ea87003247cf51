"""How a model splits for sharding and recomputation: its repeated layers, activation checkpointing, the
``trainer.precision`` values that train in a half dtype, and the context a precision runs the forward in.

Used by the strategy builder (:mod:`dynvlm.run.strategy`: the FSDP units) and the memory plan
(:mod:`dynvlm.measure.memory_plan`: what one unit holds), so both see the same layers and precisions; and by
the cost measurement (:mod:`dynvlm.measure.cost`), which runs the model outside the Trainer
(:func:`forward_context`).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from dynvlm.config import ConfigError

#: ``trainer.precision`` values that keep fp32 weights and compute in a half dtype
MIXED = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16, "bf16": torch.bfloat16, "16": torch.float16}
#: ``trainer.precision`` values that train in a half dtype throughout
TRUE_HALF = {"bf16-true": torch.bfloat16, "16-true": torch.float16}
#: ``trainer.precision`` values that run in fp32 or fp64 throughout (``32`` and ``64``: Lightning's older names)
FULL = {"32-true": torch.float32, "32": torch.float32, "64-true": torch.float64, "64": torch.float64}


def precision_of(trainer_cfg: Mapping[str, Any] | None) -> str:
    """``trainer.precision`` of a ``trainer`` section as a string (``"32-true"``, Lightning's default, when unset;
    a YAML ``16`` is ``"16"``)."""
    return str((trainer_cfg or {}).get("precision") or "32-true")


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype a ``trainer.precision`` value computes in (``bf16-mixed`` -> bf16, ``32-true`` -> fp32).

    Raises:
        ConfigError: a value whose forward dynvlm cannot reproduce outside the Trainer (Lightning's
            ``transformer-engine`` plugins swap the model's layers) or no precision at all, naming the valid ones.
    """
    table = {**MIXED, **TRUE_HALF, **FULL}
    if precision not in table:
        raise ConfigError(f"trainer.precision: {precision!r} cannot be reproduced outside the Trainer (the cost "
                          "measurement of dynvlm cost, eval and sweeps runs the model the way the precision's "
                          f"plugin does); valid: {', '.join(table)}")
    return table[precision]


def loop_dtype(precision: str) -> torch.dtype | None:
    """The dtype Lightning's loops cast the whole model to under ``precision`` (its ``HalfPrecision`` /
    ``DoublePrecision`` ``convert_module``): ``*-true`` half and ``64-true``; ``None`` for ``*-mixed`` and
    ``32-true``, which run the model in the dtypes it holds."""
    dtype = precision_dtype(precision)
    return dtype if precision in TRUE_HALF or dtype == torch.float64 else None


def compute_dtype(precision: str, device: torch.device | str) -> torch.dtype:
    """The dtype a forward computes in under ``precision`` on ``device``: :func:`precision_dtype`, except that
    Lightning runs ``16-mixed`` on a CPU as ``bf16-mixed`` (CPU autocast has no fp16; it warns and switches)."""
    dtype = precision_dtype(precision)
    if precision in MIXED and dtype == torch.float16 and torch.device(device).type == "cpu":
        return torch.bfloat16
    return dtype


def forward_context(precision: str, device: torch.device | str) -> AbstractContextManager[Any]:
    """The context Lightning's precision plugin runs the forward in under ``trainer.precision`` = ``precision``,
    to run the model on ``device`` outside the Trainer the way its loops run it.

    ``*-mixed``: ``torch.autocast`` in :func:`compute_dtype` (Lightning's ``MixedPrecision``; its FSDP plugin
    autocasts the same way on a GPU); ``*-true`` half and ``64-true``: the default dtype set to that dtype
    (Lightning's ``HalfPrecision`` / ``DoublePrecision``; the model itself must already be in
    :func:`loop_dtype`, as the loops cast it); ``32-true``: nothing. On the meta device, which autocast does
    not know, nothing: shapes and FLOP counts do not depend on the dtype. Unknown values raise as
    :func:`precision_dtype` says.
    """
    dtype = precision_dtype(precision)
    kind = torch.device(device).type
    if precision in MIXED:
        if not torch.amp.is_autocast_available(kind):
            return nullcontext()
        # as Lightning's MixedPrecision.autocast_context_manager: no weight-cast cache
        return torch.autocast(kind, dtype=compute_dtype(precision, device), cache_enabled=False)
    if precision in TRUE_HALF:
        from pytorch_lightning.plugins.precision import HalfPrecision

        return HalfPrecision(precision).forward_context()  # type: ignore[arg-type]
    if dtype == torch.float64:
        from pytorch_lightning.plugins.precision import DoublePrecision

        return DoublePrecision().forward_context()
    return nullcontext()


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
