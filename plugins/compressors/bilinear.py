"""``bilinear``: bilinear resize of the ``h x w`` token grid to an ``a x b`` grid with ``a*b <= tokens``.

The ``a x b`` grid is :func:`dynvlm.kernels.pool.pool_shape`, the rule ``pool`` and the encoders'
``downsample`` option use too, so the three give the same grid for the same budget and compare
at equal token counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dynvlm import Compressed, hookimpl
from dynvlm.interfaces import check_compressor_call

from ._grid import GridCompressor


def grid_centres(grid: tuple[int, int], out: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """Where each cell of an ``a x b`` resize of an ``h x w`` grid samples the source, flattened: float32 ``[a*b]``.

    With ``align_corners=False`` output cell ``(i, j)`` samples source row ``(i + 0.5) * h / a - 0.5``
    and column ``(j + 0.5) * w / b - 0.5``; the position is ``row * w + col`` on the flattened
    ``h*w`` grid. For ``a <= h`` and ``b <= w`` (all ``pool_shape`` gives) the values lie in
    ``[0, h*w - 1]`` and increase in row-major order.
    """
    (h, w), (a, b) = grid, out
    rows = (torch.arange(a, device=device, dtype=torch.float32) + 0.5) * (h / a) - 0.5
    cols = (torch.arange(b, device=device, dtype=torch.float32) + 0.5) * (w / b) - 0.5
    return (rows[:, None] * w + cols[None, :]).reshape(-1)


class BilinearResize(GridCompressor):
    """Bilinear resize of the token grid: ``[F, h*w, C]`` -> ``[F, a*b, C]``, ``(a, b) = pool_shape(tokens, (h, w))``.

    The tokens are viewed as an image ``[F, C, h, w]`` and resized with
    ``F.interpolate(mode="bilinear", align_corners=False)``, the way LLaVA-OneVision shrinks a
    video frame's feature map; output tokens are in row-major order of the ``a x b`` grid, and
    ``positions`` (float32 ``[F, a*b]``, increasing) holds where each one samples the source
    (:func:`grid_centres`). No parameters. Half-precision inputs are resized in float32 and cast
    back (the interpolation weights are then exact).

    Args:
        dim: encoder width ``C`` (supplied by the core).
        antialias: low-pass filter before shrinking (``F.interpolate``'s ``antialias``); off by
            default, as in LLaVA-OneVision.
        aspect_tolerance: how far (a factor ``>= 1``) the output cells' aspect may stray from the
            grid's, as ``pool``'s option of that name (same default, so both give the same grid).
    """

    def __init__(self, dim: int, antialias: bool = False, aspect_tolerance: float = 2.0) -> None:
        super().__init__(dim, aspect_tolerance)
        self.antialias = bool(antialias)

    def forward(self, x: Tensor, grid: tuple[int, int], tokens: int) -> Compressed:
        """``x`` ``[F, h*w, C]`` -> ``Compressed(x [F, a*b, C], positions [F, a*b] float32, None)``."""
        check_compressor_call(x, grid, tokens, "bilinear")
        h, w = int(grid[0]), int(grid[1])
        a, b = self.output_grid(tokens, (h, w))
        f, _, c = x.shape
        work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        # [F, h*w, C] viewed as [F, h, w, C] and permuted is a channels-last image: no copy
        img = work.reshape(f, h, w, c).permute(0, 3, 1, 2)
        out = F.interpolate(img, size=(a, b), mode="bilinear", align_corners=False, antialias=self.antialias)
        out = out.permute(0, 2, 3, 1).reshape(f, a * b, c).to(x.dtype)
        return Compressed(out, positions=grid_centres((h, w), (a, b), x.device).expand(f, -1))


@hookimpl
def register_compressors(register):
    register("bilinear", BilinearResize)
