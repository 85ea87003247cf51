"""``identity``: keep every token of every frame (the no-compression upper bound)."""

from __future__ import annotations

import torch
from torch import Tensor

from dynvlm import Compressed, Compressor, hookimpl
from dynvlm.interfaces import check_compressor_call


class Identity(Compressor):
    """No compression: ``[F, N, C]`` -> the same ``[F, N, C]`` tensor, whatever ``tokens`` is.

    It ignores the budget: :meth:`achievable` is ``N = h*w`` for every request, so it is the one
    compressor whose output can exceed ``tokens`` (``keeps_all = True`` says so; the contract
    tests and the model check that flag). The budget policy plans with ``achievable``, so a run
    with ``identity`` feeds and reports ``N`` tokens per frame and keeps at most ``N_max // N``
    frames (a compressor that serves more than asked costs frames, never budget), with or
    without ``budget.tokens_per_frame``. The model's ``visual_tokens`` is therefore ``N * T``
    for the ``T <= N_max // N`` kept frames.

    It is also the compressor to pair with an encoder's ``downsample: true``: the encoder then
    already yields the planned ``a x b`` tokens and this keeps them all.

    ``positions`` is ``arange(N)`` (int64 ``[F, N]``). No parameters.

    Args:
        dim: encoder width ``C`` (supplied by the core).
    """

    keeps_all = True  # serves only N tokens per frame: achievable() ignores the request

    def achievable(self, tokens: int, grid: tuple[int, int]) -> int:
        """``h*w`` for every ``tokens``: all tokens are kept."""
        return int(grid[0]) * int(grid[1])

    def forward(self, x: Tensor, grid: tuple[int, int], tokens: int) -> Compressed:
        """``x`` ``[F, h*w, C]`` -> ``Compressed(x, positions [F, h*w] int64, None)``; ``tokens`` is validated, then ignored."""
        check_compressor_call(x, grid, tokens, "identity")
        n = x.shape[1]
        return Compressed(x, positions=torch.arange(n, device=x.device).expand(x.shape[0], -1))


@hookimpl
def register_compressors(register):
    register("identity", Identity)
