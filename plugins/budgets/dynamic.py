"""``dynamic``: Dynamic-VLM's rule ``M = clamp(N_max // T, m_min, N)``, random ``M`` per training batch."""

from __future__ import annotations

import random
from collections.abc import Sequence

from dynvlm import hookimpl
from dynvlm.budget import Budget, FramePlan, Policy, VideoInfo, thin_to_budget, tokens_per_frame
from dynvlm.plugins.budgets.fixed import fixed_plan, uniform


class DynamicPolicy(Policy):
    """Short videos get many tokens per frame, long videos many frames (the default policy).

    For ``T`` decoded frames: keep ``T' = min(T, max_frames, N_max // m_min)`` of them (uniformly:
    frames drop only when ``m_min`` per frame would not fit) with ``M = achievable(clamp(N_max // T',
    m_min, N))`` tokens each. In training (``budget.random_in_training``) one ``M`` is drawn per
    batch, uniformly among the exact counts in ``[m_min, smallest budget value of the batch]``, so
    one model serves every budget. ``budget.tokens_per_frame`` set fixes ``M`` instead (no draw),
    as the ``fixed`` policy does: read at every plan, so it can change between batches.

    No keys of its own: it reads ``budget.max_tokens``, ``min_tokens_per_frame``, ``max_frames``,
    ``tokens_per_frame`` and ``random_in_training``.
    """

    def select(self, video: VideoInfo, keep: int) -> list[int]:
        """Which ``keep`` of the decoded frames to keep: evenly spread (``keyframes`` overrides this)."""
        return uniform(video, keep)

    def plan(self, video: VideoInfo, budget: Budget) -> FramePlan:
        """The budget value for this sample: exact ``M`` and the frames it leaves room for."""
        c = budget.cfg
        if c.tokens_per_frame is not None:
            return fixed_plan(video, budget, c.tokens_per_frame, self.select)
        keep = max(1, min(video.count, c.max_frames, c.max_tokens // c.min_tokens_per_frame))
        m = budget.achievable(tokens_per_frame(keep, c.max_tokens, c.min_tokens_per_frame, budget.n))
        # a compressor that gives more than asked (identity) costs frames, never budget
        return FramePlan(thin_to_budget(self.select(video, keep), m, c.max_tokens), m)

    def plan_batch(self, videos: Sequence[VideoInfo], budget: Budget, training: bool = False,
                   rng: random.Random | None = None) -> list[FramePlan]:
        """Evaluation: each sample its own budget value. Training: one random exact ``M`` for the batch."""
        plans = [self.plan(v, budget) for v in videos]
        c = budget.cfg
        if not (training and c.random_in_training and c.tokens_per_frame is None and plans):
            return plans
        hi = min(p.tokens for p in plans)
        lo = min(c.min_tokens_per_frame, hi)
        # uniform over the counts the compressor produces exactly: drawing an integer and rounding
        # it down would make the largest count (a square, for pooling) the rarest
        # on odd grids achievable(m_min) can fall below m_min: such counts are not in the range
        choices = sorted(m for m in {budget.achievable(m) for m in range(lo, hi + 1)} if lo <= m <= hi) or [hi]
        m = (rng or random).choice(choices)
        return [FramePlan(p.indices, m) for p in plans]


@hookimpl
def register_budgets(register):
    """Register :class:`DynamicPolicy` as the budget policy ``dynamic`` (``budget.policy: dynamic``)."""
    register("dynamic", DynamicPolicy)
