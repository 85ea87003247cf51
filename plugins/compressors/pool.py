"""``pool``: adaptive average pooling of the ``h x w`` token grid to an ``a x b`` grid with ``a*b <= tokens``.

The output grid is :func:`dynvlm.kernels.pool.pool_shape`: as many cells as fit in ``tokens``
with the cells' aspect within ``aspect_tolerance`` of the source grid's, so a budget of 120
tokens on a 24x24 grid gives 120 tokens (10x12), not the 100 of the largest square.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dynvlm import Compressed, hookimpl
from dynvlm.interfaces import check_compressor_call
from dynvlm.kernels import check_backend
from dynvlm.kernels.pool import adaptive_pool

from ._grid import GridCompressor


class AdaptivePool(GridCompressor):
    """Adaptive average pooling: ``[F, h*w, C]`` -> ``[F, a*b, C]`` with ``(a, b) = pool_shape(tokens, grid)``.

    Windows follow ``adaptive_avg_pool2d`` (start ``floor(i*h/a)``, end ``ceil((i+1)*h/a)``);
    ``a <= h`` and ``b <= w``, so no output cell repeats a source row or column. Output tokens
    are in row-major order of the ``a x b`` grid; ``positions`` holds the flattened source index
    of each window's centre (float32, strictly increasing, see :func:`_window_centres`).

    Args:
        dim: encoder width ``C`` (supplied by the core).
        backend: ``auto`` (Triton on CUDA, torch elsewhere), ``triton`` or ``torch``.
        aspect_tolerance: the factor (``>= 1``) by which an output cell's aspect ``a/b`` may
            differ from the grid's ``h/w``. ``1.0`` on a square grid gives the square grids
            (``isqrt(tokens)`` per side) of earlier versions.
    """

    def __init__(self, dim: int, backend: str = "auto", aspect_tolerance: float = 2.0) -> None:
        super().__init__(dim, aspect_tolerance)
        check_backend(backend, "pool")
        self.backend = backend

    def forward(self, x: Tensor, grid: tuple[int, int], tokens: int) -> Compressed:
        """``x`` ``[F, h*w, C]`` -> ``Compressed(x [F, a*b, C], positions [F, a*b] float32, None)``."""
        check_compressor_call(x, grid, tokens, "pool")
        h, w = int(grid[0]), int(grid[1])
        a, b = self.output_grid(tokens, (h, w))
        out = adaptive_pool(x, (a, b), grid=(h, w), backend=self.backend)
        return Compressed(out, positions=_window_centres(h, w, (a, b), x.device).expand(x.shape[0], -1))


def _centres(n: int, k: int, device: torch.device) -> Tensor:
    """Centre index of each of ``k <= n`` adaptive windows over ``n`` source cells: int64 ``[k]``.

    Window ``i`` is ``[floor(i*n/k), ceil((i+1)*n/k))``; with ``k <= n`` starts and ends both
    grow by at least one per window, so the centres strictly increase.
    """
    i = torch.arange(k, device=device)
    start = torch.div(i * n, k, rounding_mode="floor")
    end = torch.div((i + 1) * n + k - 1, k, rounding_mode="floor")
    return (start + end - 1) // 2


def _window_centres(h: int, w: int, out: tuple[int, int], device: torch.device) -> Tensor:
    """Flattened source index of each pooled cell's window centre, float32 ``[a*b]``, strictly increasing.

    Args:
        h, w: source grid.
        out: ``(a, b)`` pooled grid with ``a <= h`` and ``b <= w``.
    """
    a, b = out
    rows, cols = _centres(h, a, device), _centres(w, b, device)
    return (rows[:, None] * w + cols[None, :]).reshape(-1).float()


@hookimpl
def register_compressors(register):
    register("pool", AdaptivePool)
