"""``prune``: a small MLP scores tokens; keep the top ``tokens`` (Gumbel-perturbed in training)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dynvlm import Compressed, Compressor, hookimpl
from dynvlm.interfaces import check_compressor_call
from dynvlm.kernels import check_backend
from dynvlm.kernels.prune import gumbel_noise, gumbel_topk

AUX_LOSSES = ("none", "keep_ratio", "entropy")


class GumbelPrune(Compressor):
    """Learned token pruning: ``[F, N, C]`` -> the ``tokens`` best-scored tokens ``[F, tokens, C]``, in source order.

    Scorer: ``Linear(C, hidden) -> GELU -> Linear(hidden, 1)``. In training the scores get
    Gumbel noise and the hard top-``tokens`` choice is made differentiable by a straight-through
    factor on every kept row: ``1 + soft - soft.detach()`` (exactly 1 in the forward pass),
    ``soft = sigmoid((z - threshold) / tau)`` with ``z`` the perturbed score and the threshold
    half-way between the last kept and the first dropped ``z``. In eval the choice is the
    deterministic top-``tokens`` of the scores (ties to the lower index). ``positions`` holds the
    kept source indices (int64, increasing).

    Args:
        dim: encoder width ``C`` (supplied by the core).
        hidden: scorer hidden width (default ``max(1, dim // 4)``).
        tau: temperature of the straight-through relaxation.
        noise: Gumbel noise scale in training (0 disables it).
        aux_loss: ``none``; ``keep_ratio``: ``(mean sigmoid(score) - tokens/N)^2``;
            ``entropy``: mean binary entropy of ``sigmoid(score)`` (pushes scores to decide).
        aux_weight: multiplier of the aux loss.
        seed: when set, the training noise comes from this module's own generator seeded with
            it (reproducible across runs regardless of the global RNG); else from the global RNG.
        backend: ``auto`` (Triton on CUDA, torch elsewhere), ``triton`` or ``torch``.
    """

    def __init__(
        self,
        dim: int,
        hidden: int | None = None,
        tau: float = 1.0,
        noise: float = 1.0,
        aux_loss: str = "none",
        aux_weight: float = 0.01,
        seed: int | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(dim)
        if aux_loss not in AUX_LOSSES:
            raise ValueError(f"prune: aux_loss must be one of {', '.join(AUX_LOSSES)}, got {aux_loss!r}")
        check_backend(backend, "prune")
        if tau <= 0:
            raise ValueError(f"prune: tau must be positive, got {tau!r}")
        if noise < 0:
            raise ValueError(f"prune: noise must be >= 0, got {noise!r}")
        hidden = max(1, self.dim // 4) if hidden is None else int(hidden)
        if hidden < 1:
            raise ValueError(f"prune: hidden must be positive, got {hidden!r}")
        self.scorer = nn.Sequential(nn.Linear(self.dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.tau, self.noise, self.aux_loss, self.aux_weight = float(tau), float(noise), aux_loss, float(aux_weight)
        self.seed, self.backend = seed, backend
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator | None:
        """This module's noise generator on ``device`` (seeded with ``seed`` on first use), or ``None`` without a seed."""
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(int(self.seed))
        return self._generators[key]

    def scores(self, x: Tensor) -> Tensor:
        """``[F, N, C]`` tokens -> ``[F, N]`` fp32 scores."""
        w = self.scorer[0].weight
        return self.scorer(x.to(w.dtype)).squeeze(-1).float()

    def forward(self, x: Tensor, grid: tuple[int, int], tokens: int) -> Compressed:
        """``x`` ``[F, h*w, C]`` -> ``Compressed(x [F, tokens, C], positions [F, tokens] int64, aux_loss)``."""
        check_compressor_call(x, grid, tokens, "prune")
        if x.shape[2] != self.dim:
            raise ValueError(f"prune: x has width C={x.shape[2]} but the scorer was built for dim={self.dim}")
        scores = self.scores(x)
        noise = None
        if self.training and self.noise > 0:
            noise = self.noise * gumbel_noise(tuple(scores.shape), x.device, self.generator(x.device))
        out, kept = gumbel_topk(x, scores, tokens, noise, backend=self.backend)
        if self.training and torch.is_grad_enabled():
            factor = self._straight_through(scores if noise is None else scores + noise, kept)
            out = out * factor[..., None].to(out.dtype)
        return Compressed(out, positions=kept, aux_loss=self._aux(scores, tokens) if self.training else None)

    def _straight_through(self, z: Tensor, kept: Tensor) -> Tensor:
        """``[F, tokens]`` factors equal to 1 whose gradient is that of ``sigmoid((z - threshold)/tau)``."""
        keep = torch.zeros_like(z, dtype=torch.bool).scatter_(1, kept, True)
        zd = z.detach()
        last_kept = zd.masked_fill(~keep, float("inf")).amin(1, keepdim=True)
        first_dropped = zd.masked_fill(keep, float("-inf")).amax(1, keepdim=True)
        # all tokens kept: no boundary, put the threshold one tau below the lowest kept score
        threshold = torch.where(torch.isinf(first_dropped), last_kept - self.tau, (last_kept + first_dropped) / 2)
        soft = torch.sigmoid((z.gather(1, kept) - threshold) / self.tau)
        return 1.0 + (soft - soft.detach())

    def _aux(self, scores: Tensor, tokens: int) -> Tensor | None:
        if self.aux_loss == "none":
            return None
        p = torch.sigmoid(scores)
        if self.aux_loss == "keep_ratio":
            loss = (p.mean() - tokens / scores.shape[1]) ** 2
        else:
            loss = -(p * torch.log(p.clamp_min(1e-6)) + (1 - p) * torch.log((1 - p).clamp_min(1e-6))).mean()
        return self.aux_weight * loss


@hookimpl
def register_compressors(register):
    register("prune", GumbelPrune)
