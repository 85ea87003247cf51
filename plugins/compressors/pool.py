"""``pool``: adaptive average pooling of the ``h x w`` token grid to ``s x s``, ``s = isqrt(tokens)``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dynvlm import Compressed, Compressor, hookimpl
from dynvlm.interfaces import check_compressor_call


class AdaptivePool(Compressor):
    """Adaptive average pooling: ``[F, h*w, C]`` -> ``[F, s*s, C]`` with ``s = isqrt(tokens)``.

    Windows follow ``adaptive_avg_pool2d`` (start ``floor(i*h/s)``, end ``ceil((i+1)*h/s)``),
    so ``s`` larger than ``h`` also works. Output tokens are in row-major grid order;
    ``positions`` holds the flattened source index of each window's centre.
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim)

    def achievable(self, tokens: int, grid: tuple[int, int]) -> int:
        s = min(math.isqrt(max(1, int(tokens))), max(grid))
        return s * s

    def forward(self, x: Tensor, grid: tuple[int, int], tokens: int) -> Compressed:
        check_compressor_call(x, grid, tokens, "pool")
        h, w = grid
        s = math.isqrt(tokens)
        frames, _, c = x.shape
        out = F.adaptive_avg_pool2d(x.transpose(1, 2).reshape(frames, c, h, w), (s, s))
        out = out.reshape(frames, c, s * s).transpose(1, 2)
        return Compressed(out, positions=_window_centres(h, w, s, x.device).expand(frames, -1))


def _window_centres(h: int, w: int, s: int, device: torch.device) -> Tensor:
    """Flattened source index of the centre of each adaptive-pooling window, ``[s*s]``."""
    i = torch.arange(s, device=device)
    rows = (torch.div(i * h, s, rounding_mode="floor") + torch.div((i + 1) * h + s - 1, s, rounding_mode="floor") - 1) // 2
    cols = (torch.div(i * w, s, rounding_mode="floor") + torch.div((i + 1) * w + s - 1, s, rounding_mode="floor") - 1) // 2
    return (rows[:, None] * w + cols[None, :]).reshape(-1)


@hookimpl
def register_compressors(register):
    register("pool", AdaptivePool)
