"""``random``: keep a uniformly random subset of ``tokens`` tokens per frame, in source order.

The module is ``random_keep``, not ``random``: a file named ``random.py`` shadows the standard
library's ``random`` whenever its folder lands on ``sys.path`` (running it as a script, some tools).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dynvlm import Compressed, Compressor, hookimpl
from dynvlm.interfaces import check_compressor_call


def eval_seed(seed: int, n: int, tokens: int) -> int:
    """The generator seed of the evaluation subset for ``(seed, N, tokens)`` (a 63-bit mix, so that
    nearby arguments do not give correlated streams)."""
    v = (int(seed) * 0x9E3779B97F4A7C15 + int(n) * 0xBF58476D1CE4E5B9 + int(tokens) * 0x94D049BB133111EB) % (1 << 64)
    v ^= v >> 31
    return v % (1 << 63)


class RandomKeep(Compressor):
    """Random token dropping: ``[F, N, C]`` -> ``[F, tokens, C]``, a uniform random ``tokens``-subset kept in source order.

    - Training: every frame gets its own subset, drawn from this module's CPU generator (seeded
      with ``seed`` on first use, so a run is reproducible whatever the global RNG does).
    - Evaluation: deterministic. The subset depends only on ``(seed, N, tokens)`` and is shared by
      every frame, so a frame's tokens do not depend on which batch, or which place in the batch,
      it was evaluated in (per-frame subsets keyed on the frame's index in the call would change
      with ``eval_batch_size``).

    Indices are drawn on the CPU and moved to the input's device, so GPU and CPU runs keep the
    same tokens. ``positions`` holds the kept source indices (int64 ``[F, tokens]``, increasing).
    No parameters; the gradient reaches the kept input tokens.

    Args:
        dim: encoder width ``C`` (supplied by the core).
        seed: seed of the training generator and of the evaluation subsets.
    """

    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__(dim)
        self.seed = int(seed)
        self._generator: torch.Generator | None = None

    def keep_indices(self, frames: int, n: int, tokens: int) -> Tensor:
        """Sorted kept indices, int64 ``[frames, tokens]`` on the CPU (training: fresh per frame; eval: fixed, shared)."""
        if self.training:
            if self._generator is None:
                self._generator = torch.Generator().manual_seed(self.seed)
            keys = torch.rand(frames, n, generator=self._generator)
        else:
            g = torch.Generator().manual_seed(eval_seed(self.seed, n, tokens))
            keys = torch.rand(1, n, generator=g).expand(frames, n)
        # the top-`tokens` of i.i.d. uniform keys is a uniform random subset
        return keys.topk(tokens, dim=1).indices.sort(dim=1).values

    def forward(self, x: Tensor, grid: tuple[int, int], tokens: int) -> Compressed:
        """``x`` ``[F, h*w, C]`` -> ``Compressed(x [F, tokens, C], positions [F, tokens] int64, None)``."""
        check_compressor_call(x, grid, tokens, "random")
        f, n, c = x.shape
        kept = self.keep_indices(f, n, tokens).to(x.device)
        out = x.gather(1, kept[..., None].expand(-1, -1, c))
        return Compressed(out, positions=kept)


@hookimpl
def register_compressors(register):
    register("random", RandomKeep)
