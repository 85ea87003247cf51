"""The visual-token budget: how many frames a sample keeps and how many tokens each frame gets.

Dynamic-VLM's rule gives short videos many tokens per frame and long videos many frames::

    M = clamp(N_max // T, m_min, N)

with ``N_max`` the total visual tokens of a sample, ``m_min`` the floor per frame and ``N``
the encoder's tokens per frame. (The seed text writes ``max(N_max / T, 576)``; the paper means
a clamp, so that long videos get fewer tokens per frame.) When even ``m_min`` tokens per frame
would exceed ``N_max``, frames are dropped uniformly to ``N_max // m_min``, so the total never
exceeds ``N_max``. The planned count is made exact with ``compressor.achievable(M, grid)``
(e.g. a square for pooling), which never rounds up.

Sampling at ``budget.fps`` up to ``budget.max_frames`` happens when a video is decoded
(:func:`dynvlm.video.read_video`); the plan here caps what was decoded again, so frames given
directly (tests, images) obey the same limits.

Training draws ``M`` at random in ``[m_min, budget value]`` once per batch so one model serves
every budget; ``tokens_per_frame`` fixes ``M`` for ablations (frames then drop to ``N_max // M``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .schema import BudgetConfig, section

__all__ = [
    "BudgetPolicy",
    "FramePlan",
    "budget_config",
    "tokens_per_frame",
    "uniform_indices",
]


def tokens_per_frame(frames: int, max_tokens: int, min_tokens: int, tokens: int) -> int:
    """``clamp(max_tokens // frames, min_tokens, tokens)``: the dynamic tokens per frame for ``frames`` frames.

    Args:
        frames: ``T``, frames of the sample (``>= 1``).
        max_tokens: ``N_max``, total visual tokens per sample.
        min_tokens: ``m_min``, the floor per frame.
        tokens: ``N``, tokens per frame the encoder produces (the ceiling).
    """
    if frames < 1:
        raise ValueError(f"budget: a sample needs at least one frame, got T={frames}")
    return max(min_tokens, min(max_tokens // frames, tokens))


def uniform_indices(total: int, keep: int) -> list[int]:
    """``keep`` indices spread over ``range(total)`` by truncated ``linspace`` (first and last kept),
    the rule the common evaluation harnesses use; all of them if ``keep >= total``.

    The one implementation of frame thinning: the video reader's ``max_frames`` cap, the budget's
    ``N_max // M`` cap and the synthetic accuracy ceilings all call it, so they agree frame for frame.
    """
    if keep >= total:
        return list(range(total))
    # np.linspace's float steps, not exact division: the harnesses' indices differ in places
    return [int(i) for i in np.linspace(0, total - 1, keep).astype(int)]


@dataclass(frozen=True)
class FramePlan:
    """What one sample feeds the model: the ``indices`` of its frames to keep and ``tokens`` per frame."""

    indices: tuple[int, ...]
    tokens: int

    @property
    def visual_tokens(self) -> int:
        return len(self.indices) * self.tokens


def budget_config(budget: BudgetConfig | Mapping[str, Any] | None) -> BudgetConfig:
    """A :class:`BudgetConfig` from a dataclass, a mapping (e.g. a ``DictConfig`` section) or ``None``."""
    return section(BudgetConfig, budget, "budget")


class BudgetPolicy:
    """Plans frames and tokens per frame for samples, given the encoder grid and a compressor.

    Args:
        budget: the ``budget`` config section.
        grid: ``(h, w)`` encoder grid, ``N = h * w``.
        achievable: ``compressor.achievable`` (``(tokens, grid) -> exact count <= tokens``);
            default serves every count.
    """

    def __init__(self, budget: BudgetConfig | Mapping[str, Any] | None, grid: tuple[int, int], achievable=None) -> None:
        self.cfg = budget_config(budget)
        self.grid = (int(grid[0]), int(grid[1]))
        self.n = self.grid[0] * self.grid[1]
        self._achievable = achievable or (lambda m, g: max(1, min(int(m), g[0] * g[1])))
        c = self.cfg
        if c.max_tokens < 1:
            raise ValueError(f"budget.max_tokens must be >= 1, got {c.max_tokens}")
        if not 1 <= c.min_tokens_per_frame <= self.n:
            raise ValueError(f"budget.min_tokens_per_frame={c.min_tokens_per_frame} must be in [1, N={self.n}] "
                             f"(the encoder grid {self.grid[0]}x{self.grid[1]})")
        if c.min_tokens_per_frame > c.max_tokens:
            raise ValueError(f"budget.min_tokens_per_frame={c.min_tokens_per_frame} exceeds "
                             f"budget.max_tokens={c.max_tokens}")
        if c.tokens_per_frame is not None and not 1 <= c.tokens_per_frame <= c.max_tokens:
            raise ValueError(f"budget.tokens_per_frame={c.tokens_per_frame} must be in [1, max_tokens={c.max_tokens}]")
        if c.max_frames < 1:
            raise ValueError(f"budget.max_frames must be >= 1, got {c.max_frames}")

    def achievable(self, tokens: int) -> int:
        """The exact count the compressor gives for ``tokens`` (never more)."""
        return int(self._achievable(int(tokens), self.grid))

    def frames_kept(self, frames: int) -> int:
        """How many of ``frames`` decoded frames fit: capped by ``max_frames`` and ``N_max // floor``."""
        c = self.cfg
        floor = self.fixed_tokens or c.min_tokens_per_frame
        return max(1, min(frames, c.max_frames, c.max_tokens // floor))

    @property
    def fixed_tokens(self) -> int | None:
        """The ablation override made exact (``None`` when the dynamic rule applies)."""
        t = self.cfg.tokens_per_frame
        return None if t is None else self.achievable(min(t, self.n))

    def budget_tokens(self, kept: int) -> int:
        """Exact tokens per frame for ``kept`` frames (the override when set, else the clamp rule)."""
        if self.fixed_tokens is not None:
            return self.fixed_tokens
        c = self.cfg
        return self.achievable(tokens_per_frame(kept, c.max_tokens, c.min_tokens_per_frame, self.n))

    def plan(self, frames: int) -> FramePlan:
        """Deterministic plan for a sample of ``frames`` frames (evaluation)."""
        kept = self.frames_kept(frames)
        return FramePlan(tuple(uniform_indices(frames, kept)), self.budget_tokens(kept))

    def plan_batch(self, frame_counts: Sequence[int], training: bool = False,
                   rng: random.Random | None = None) -> list[FramePlan]:
        """Plans for a batch. In training (with ``random_in_training`` and no override) one ``M`` is
        drawn uniformly among the exact counts in ``[m_min, min budget value of the batch]`` and
        shared by every sample."""
        plans = [self.plan(t) for t in frame_counts]
        if not (training and self.cfg.random_in_training and self.fixed_tokens is None and plans):
            return plans
        hi = min(p.tokens for p in plans)
        lo = min(self.cfg.min_tokens_per_frame, hi)
        # uniform over the counts the compressor produces exactly: drawing an integer and rounding
        # it down would make the largest count (a square, for pooling) the rarest
        choices = sorted({self.achievable(m) for m in range(lo, hi + 1)})
        m = (rng or random).choice(choices)
        return [FramePlan(p.indices, m) for p in plans]
