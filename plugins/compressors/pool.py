"""``pool``: adaptive average pooling of the ``h x w`` token grid to ``s x s``, ``s = isqrt(tokens)``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dynvlm import Compressed, Compressor, hookimpl
from dynvlm.interfaces import check_compressor_call
from dynvlm.kernels._backend import BACKENDS
from dynvlm.kernels.pool import adaptive_pool


class AdaptivePool(Compressor):
    """Adaptive average pooling: ``[F, h*w, C]`` -> ``[F, s*s, C]`` with ``s = isqrt(tokens)``.

    Windows follow ``adaptive_avg_pool2d`` (start ``floor(i*h/s)``, end ``ceil((i+1)*h/s)``),
    so ``s`` larger than ``h`` also works. Output tokens are in row-major grid order;
    ``positions`` holds the flattened source index of each window's centre (float32, see
    :func:`_window_centres`).

    Args:
        dim: encoder width ``C`` (supplied by the core).
        backend: ``auto`` (Triton on CUDA, torch elsewhere), ``triton`` or ``torch``.
    """

    def __init__(self, dim: int, backend: str = "auto") -> None:
        super().__init__(dim)
        if backend not in BACKENDS:
            raise ValueError(f"pool: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.backend = backend

    def achievable(self, tokens: int, grid: tuple[int, int]) -> int:
        """``s*s`` with ``s = isqrt(tokens)``: the count pooling actually produces."""
        s = min(math.isqrt(max(1, int(tokens))), max(grid))
        return s * s

    def forward(self, x: Tensor, grid: tuple[int, int], tokens: int) -> Compressed:
        """``x`` ``[F, h*w, C]`` -> ``Compressed(x [F, s*s, C], positions [F, s*s] float32, None)``."""
        check_compressor_call(x, grid, tokens, "pool")
        h, w = int(grid[0]), int(grid[1])
        s = math.isqrt(tokens)
        out = adaptive_pool(x, (s, s), grid=(h, w), backend=self.backend)
        return Compressed(out, positions=_window_centres(h, w, s, x.device).expand(x.shape[0], -1))


def _window_centres(h: int, w: int, s: int, device: torch.device) -> Tensor:
    """Position of each of the ``s*s`` pooled cells on the flattened source grid, float32 ``[s*s]``, increasing.

    For ``s <= h`` it is the source index of the window centre. For ``s > h`` (a non-square
    grid pooled past its short side) output rows repeat source rows, so no source index can
    increase along row-major order; row ``i`` then sits at fractional source row ``i*h/s``.
    """
    i = torch.arange(s, device=device)
    cols = (
        torch.div(i * w, s, rounding_mode="floor") + torch.div((i + 1) * w + s - 1, s, rounding_mode="floor") - 1
    ) // 2
    if s <= h:
        rows = (
            torch.div(i * h, s, rounding_mode="floor") + torch.div((i + 1) * h + s - 1, s, rounding_mode="floor") - 1
        ) // 2
        return (rows[:, None] * w + cols[None, :]).reshape(-1).float()
    return ((i[:, None] * w + cols[None, :]).float() * (h / s)).reshape(-1)


@hookimpl
def register_compressors(register):
    register("pool", AdaptivePool)
