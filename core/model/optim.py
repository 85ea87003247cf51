"""What the optimizer sees, under any strategy: parameter groups decided by role, gradient clipping.

Weight decay goes by what a parameter *is*, never by its shape (FSDP hands the optimizer flattened 1-D
shards, so a shape rule would put every weight in the no-decay group): the weight matrices of linear,
convolution and embedding layers decay; biases, the scales of normalisation layers and free-standing
vectors (a ViT's class embedding) do not (:func:`decays`). For unsharded models this is the same split
as the usual ``p.dim() >= 2`` rule (tests/test_optim.py checks it on every compressor of the tiny configs).

Parameter names are given without the wrappers FSDP and activation checkpointing insert
(:func:`clean_name`), so groups, saved keys and checkpoints read the same under every strategy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

#: modules whose ``weight`` is a matrix that decays
DECAYING = (nn.Linear, nn.Embedding, nn.modules.conv._ConvNd, nn.Bilinear)
#: name parts inserted by FSDP and activation-checkpoint wrappers
_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def clean_name(name: str) -> str:
    """``name`` without the wrapper parts FSDP, checkpoint wrappers and ``torch.compile`` insert."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def decays(owner: nn.Module, leaf: str) -> bool:
    """Whether parameter ``leaf`` of module ``owner`` takes weight decay: the ``weight`` of a linear,
    convolution or embedding layer; not biases, normalisation scales or free-standing vectors."""
    if leaf != "weight" or "norm" in type(owner).__name__.lower():
        return False
    return isinstance(owner, DECAYING) or type(owner).__name__ == "Conv1D"  # transformers' GPT-2 style linear


def named_parameters_by_role(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, bool]]:
    """``(clean name, parameter, decays)`` for each parameter of ``model`` once."""
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for leaf, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            yield clean_name(f"{module_name}.{leaf}" if module_name else leaf), p, decays(module, leaf)


def param_groups(model: nn.Module, lr: float, weight_decay: float, encoder_lr_ratio: float,
                 encoder_prefix: str = "encoder.") -> list[dict[str, Any]]:
    """AdamW groups of the trainable parameters: the encoder at ``lr * encoder_lr_ratio``, the rest at
    ``lr``; weight decay by role (:func:`decays`). Groups are named ``main``, ``main/no_decay``,
    ``encoder``, ``encoder/no_decay`` (those that have parameters, in that sorted order)."""
    groups: dict[tuple[str, bool], list[Tensor]] = {}
    for name, p, decay in named_parameters_by_role(model):
        if not p.requires_grad:
            continue
        part = "encoder" if name.startswith(encoder_prefix) else "main"
        groups.setdefault((part, decay), []).append(p)
    return [
        {"params": params, "name": f"{part}{'' if decay else '/no_decay'}",
         "lr": lr * (encoder_lr_ratio if part == "encoder" else 1.0),
         "weight_decay": weight_decay if decay else 0.0}
        for (part, decay), params in sorted(groups.items())
    ]


def clip_gradients(module: Any, optimizer: Any, value: float, algorithm: str = "norm") -> None:
    """Clip gradients of a LightningModule under whatever strategy trains it.

    FSDP: the wrapped root's ``clip_grad_norm_`` (the norm over every rank's shards; Lightning's
    FSDP precision plugin refuses ``norm``), or by value on the local shards (elementwise, so the same).
    DeepSpeed clips inside its own step (its config's ``gradient_clipping``): nothing here.
    Otherwise Lightning's ``clip_gradients`` (which unscales fp16 gradients first).
    """
    trainer = module.trainer
    wrapped = trainer.model if trainer is not None else None
    kind = type(trainer.strategy).__name__ if trainer is not None else ""
    if "DeepSpeed" in kind:
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(wrapped, FullyShardedDataParallel):
        if algorithm == "norm":
            wrapped.clip_grad_norm_(value)
        else:
            torch.nn.utils.clip_grad_value_([p for p in wrapped.parameters() if p.grad is not None], value)
        return
    module.clip_gradients(optimizer, gradient_clip_val=value, gradient_clip_algorithm=algorithm)
