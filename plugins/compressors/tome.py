"""``tome``: ToMe bipartite soft matching repeated until at most ``tokens`` tokens per frame remain."""

from __future__ import annotations

from torch import Tensor, nn

from dynvlm import Compressed, Compressor, hookimpl
from dynvlm.interfaces import check_compressor_call
from dynvlm.kernels import check_backend
from dynvlm.kernels.tome import tome_merge

KEYS = ("tokens", "proj")


class ToMe(Compressor):
    """Token merging: ``[F, N, C]`` -> ``[F, tokens, C]`` size-weighted means of similar tokens.

    Each round splits the current tokens into alternating sets A/B, matches every A token to
    its most cosine-similar B token and merges the ``r = min(n - tokens, n // 2)`` best pairs
    (ties: stable descending order, lower index first); rounds repeat until ``tokens`` remain.
    Output tokens are ordered by their size-weighted centroid, which ``positions`` holds
    (float32 ``[F, tokens]``, non-decreasing).

    Args:
        dim: encoder width ``C`` (supplied by the core).
        key: ``"tokens"`` compares the tokens themselves; ``"proj"`` compares a learned linear
            projection (initialised to the identity), trained through a straight-through factor
            on each merged token's weight (the merge values are unchanged).
        key_dim: width of the projected keys (default ``dim``; only with ``key: proj``).
        backend: ``auto`` (Triton on CUDA, torch elsewhere), ``triton`` or ``torch``.
    """

    def __init__(self, dim: int, key: str = "tokens", key_dim: int | None = None, backend: str = "auto") -> None:
        super().__init__(dim)
        if key not in KEYS:
            raise ValueError(f"tome: key must be one of {', '.join(KEYS)}, got {key!r}")
        check_backend(backend, "tome")
        if key_dim is not None and (key != "proj" or key_dim < 1):
            raise ValueError(f"tome: key_dim={key_dim!r} needs key='proj' and a positive width")
        self.key = key
        self.backend = backend
        self.proj: nn.Linear | None = None
        if key == "proj":
            width = key_dim or self.dim
            self.proj = nn.Linear(self.dim, width, bias=False)
            nn.init.eye_(self.proj.weight)  # start from the plain-token metric

    def _keys(self, x: Tensor) -> Tensor:
        assert self.proj is not None
        return self.proj(x.to(self.proj.weight.dtype))

    def forward(self, x: Tensor, grid: tuple[int, int], tokens: int) -> Compressed:
        """``x`` ``[F, h*w, C]`` -> ``Compressed(x [F, tokens, C], positions [F, tokens] float32, None)``."""
        check_compressor_call(x, grid, tokens, "tome")
        if x.shape[2] != self.dim and self.proj is not None:
            raise ValueError(f"tome: x has width C={x.shape[2]} but the key projection was built for dim={self.dim}")
        res = tome_merge(
            x,
            tokens,
            key_fn=self._keys if self.proj is not None else None,
            backend=self.backend,
            key_grad=self.proj is not None and self.training,
        )
        return Compressed(res.x, positions=res.positions)


@hookimpl
def register_compressors(register):
    register("tome", ToMe)
