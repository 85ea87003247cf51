"""``bilinear``: bilinear resize of the ``h x w`` token grid to an ``a x b`` grid with ``a*b <= tokens``.

The grid rule :func:`fit_grid` (aspect kept, no upsampling) is shared with the encoders'
``downsample`` option, which resizes frames before the encoder to the same ``a x b`` grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dynvlm import Compressed, Compressor, hookimpl
from dynvlm.interfaces import check_compressor_call


def fit_grid(tokens: int, grid: tuple[int, int]) -> tuple[int, int]:
    """The ``(a, b)`` grid, ``a <= h``, ``b <= w``, ``a*b <= tokens``, that keeps the aspect of ``grid`` ``(h, w)``.

    Candidates pair every height ``a`` with the widths of the same aspect rounded down and up,
    ``floor(a*w/h)`` and ``ceil(a*w/h)``, and every width ``b`` likewise with ``b*h/w`` (each
    clamped to ``[1, side]``), so the aspect is ``h:w`` to within one cell; among those that fit,
    the largest ``a*b`` wins (ties: the aspect closest to ``h:w``, then the taller). Taking the
    largest ``a*b <= tokens`` of *any* shape would turn a 24x24 grid and ``tokens=23`` into a 1x23
    strip; here it gives 4x4, the same count as ``pool``'s ``isqrt(tokens)**2`` on square grids.
    ``(1, 1)`` always fits.

    Args:
        tokens: the budget ``M`` (values below 1 are treated as 1, above ``h*w`` as ``h*w``).
        grid: the source ``(h, w)``.

    Returns:
        ``(a, b)``; ``fit_grid(h*w, (h, w)) == (h, w)``.
    """
    h, w = int(grid[0]), int(grid[1])
    if h < 1 or w < 1:
        raise ValueError(f"fit_grid: grid must have positive sides, got {grid!r}")
    m = max(1, min(int(tokens), h * w))
    target = math.log(h / w)

    def near(num: int, den: int, side: int) -> set[int]:
        # floor and ceil of num/den in exact integer arithmetic (no float rounding at exact ratios)
        return {min(side, max(1, v)) for v in (num // den, -(-num // den))}

    candidates = {(a, b) for a in range(1, h + 1) for b in near(a * w, h, w)}
    candidates |= {(a, b) for b in range(1, w + 1) for a in near(b * h, w, h)}
    fitting = [(a, b) for a, b in candidates if a * b <= m]
    return max(fitting, key=lambda ab: (ab[0] * ab[1], -abs(math.log(ab[0] / ab[1]) - target), ab[0]))


def grid_centres(grid: tuple[int, int], out: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """Where each cell of an ``a x b`` resize of an ``h x w`` grid samples the source, flattened: float32 ``[a*b]``.

    With ``align_corners=False`` output cell ``(i, j)`` samples source row ``(i + 0.5) * h / a - 0.5``
    and column ``(j + 0.5) * w / b - 0.5``; the position is ``row * w + col`` on the flattened
    ``h*w`` grid. For ``a <= h`` and ``b <= w`` (all :func:`fit_grid` gives) the values lie in
    ``[0, h*w - 1]`` and increase in row-major order.
    """
    (h, w), (a, b) = grid, out
    rows = (torch.arange(a, device=device, dtype=torch.float32) + 0.5) * (h / a) - 0.5
    cols = (torch.arange(b, device=device, dtype=torch.float32) + 0.5) * (w / b) - 0.5
    return (rows[:, None] * w + cols[None, :]).reshape(-1)


class BilinearResize(Compressor):
    """Bilinear resize of the token grid: ``[F, h*w, C]`` -> ``[F, a*b, C]``, ``(a, b) = fit_grid(tokens, (h, w))``.

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
    """

    def __init__(self, dim: int, antialias: bool = False) -> None:
        super().__init__(dim)
        self.antialias = bool(antialias)

    def achievable(self, tokens: int, grid: tuple[int, int]) -> int:
        """``a*b`` of :func:`fit_grid`: the largest count ``<= tokens`` this resize produces on ``grid``."""
        a, b = fit_grid(tokens, grid)
        return a * b

    def forward(self, x: Tensor, grid: tuple[int, int], tokens: int) -> Compressed:
        """``x`` ``[F, h*w, C]`` -> ``Compressed(x [F, a*b, C], positions [F, a*b] float32, None)``."""
        check_compressor_call(x, grid, tokens, "bilinear")
        h, w = int(grid[0]), int(grid[1])
        a, b = fit_grid(tokens, (h, w))
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
