"""The grid-shaped output rule shared by compressors that resize the token grid (``pool``, ``bilinear``)."""

from __future__ import annotations

from dynvlm import Compressor
from dynvlm.kernels.pool import pool_shape


class GridCompressor(Compressor):
    """A compressor whose output is an ``a x b`` grid, ``(a, b) = pool_shape(tokens, (h, w), aspect_tolerance)``.

    Subclasses implement ``forward``; this class validates ``aspect_tolerance`` and answers
    :meth:`output_grid` and :meth:`achievable`, so every grid-shaped compressor gives the same
    grid (and token count) for the same budget.

    Args:
        dim: encoder width ``C`` (supplied by the core).
        aspect_tolerance: the factor (``>= 1``) by which an output cell's aspect may differ from
            the source grid's.
    """

    def __init__(self, dim: int, aspect_tolerance: float = 2.0) -> None:
        super().__init__(dim)
        if not aspect_tolerance >= 1.0:
            raise ValueError(f"{type(self).__name__}: aspect_tolerance must be >= 1, got {aspect_tolerance!r}")
        self.aspect_tolerance = float(aspect_tolerance)

    def output_grid(self, tokens: int, grid: tuple[int, int]) -> tuple[int, int]:
        """``(a, b)``, ``a <= h``, ``b <= w``, ``a*b <= tokens``: the output grid for ``tokens`` on ``grid`` ``(h, w)``."""
        return pool_shape(int(tokens), (int(grid[0]), int(grid[1])), self.aspect_tolerance)

    def achievable(self, tokens: int, grid: tuple[int, int]) -> int:
        """``a*b`` of :meth:`output_grid`: the exact count produced for ``tokens`` (never more)."""
        a, b = self.output_grid(tokens, grid)
        return a * b
