"""The projector from encoder width ``C`` to language-model width ``D`` (LLaVA's ``mlp2x_gelu``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Projector(nn.Module):
    """An MLP with GELU between layers: ``[..., C]`` -> ``[..., D]``.

    Args:
        in_dim: ``C``, the encoder (compressor output) width.
        out_dim: ``D``, the language model's embedding width.
        depth: number of linear layers (2 = ``mlp2x_gelu``; 1 = a linear map).
        hidden: width of the hidden layers (default ``D``).
        separator: also hold :attr:`separator`, a learned ``[D]`` vector the model appends after each
            video's visual tokens (LLaVA-OneVision's ``image_newline``; initialised as theirs,
            normal with std ``1/sqrt(D)``); it trains with the projector.
    """

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2, hidden: int | None = None,
                 separator: bool = False) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"model.projector.depth must be >= 1, got {depth}")
        if hidden is not None and hidden < 1:
            raise ValueError(f"model.projector.hidden must be >= 1, got {hidden}")
        hidden = hidden or out_dim
        dims = [in_dim] + [hidden] * (depth - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(depth):
            if i:
                layers.append(nn.GELU())
            layers.append(nn.Linear(dims[i], dims[i + 1]))
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.separator = nn.Parameter(torch.randn(out_dim) / math.sqrt(out_dim)) if separator else None

    def forward(self, x: Tensor) -> Tensor:
        """``[..., C]`` -> ``[..., D]``."""
        return self.net(x)
