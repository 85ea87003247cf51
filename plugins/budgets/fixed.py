"""``fixed``: ``M`` tokens per frame given, ``N_max // M`` frames (uniformly spread)."""

from __future__ import annotations

from collections.abc import Callable

from dynvlm import hookimpl
from dynvlm.budget import Budget, FramePlan, Policy, VideoInfo, thin_to_budget, uniform_indices

#: ``(video, keep) -> keep strictly increasing frame indices``: how a policy spreads its frames
Select = Callable[[VideoInfo, int], list[int]]


def uniform(video: VideoInfo, keep: int) -> list[int]:
    """``keep`` frames evenly over the video (truncated linspace, first and last kept)."""
    return uniform_indices(video.count, keep)


def fixed_plan(video: VideoInfo, budget: Budget, tokens: int, select: Select = uniform) -> FramePlan:
    """The plan for a fixed ``tokens`` per frame: ``M = achievable(tokens)``, at most
    ``min(T, max_frames, N_max // M)`` frames chosen by ``select``.

    The frame cap uses the exact ``M``, so a count the compressor rounds down (e.g. a grid
    pooling) leaves room for the frames that fit, and the total stays ``<= N_max``.
    """
    m = budget.achievable(tokens)
    keep = max(1, min(video.count, budget.cfg.max_frames, budget.max_tokens // m))
    return FramePlan(thin_to_budget(select(video, keep), m, budget.max_tokens), m)


class FixedPolicy(Policy):
    """Fixed tokens per frame ``M`` (made exact by the compressor); frames drop to ``N_max // M``.

    Args:
        tokens_per_frame: ``M``; ``None`` takes ``budget.tokens_per_frame`` (one of them must be set).
            No random ``M`` in training: a fixed-budget ablation trains at the budget it tests.
    """

    def __init__(self, tokens_per_frame: int | None = None) -> None:
        """Keep ``tokens_per_frame`` (``M`` >= 1, or ``None`` for ``budget.tokens_per_frame``); raises ``ValueError`` otherwise."""
        if tokens_per_frame is not None and (isinstance(tokens_per_frame, bool) or int(tokens_per_frame) < 1):
            raise ValueError(f"budget.policy.tokens_per_frame must be an int >= 1, got {tokens_per_frame!r}")
        self.tokens_per_frame = None if tokens_per_frame is None else int(tokens_per_frame)

    def tokens(self, budget: Budget) -> int:
        """``M`` requested: the policy's own key, else ``budget.tokens_per_frame``."""
        m = self.tokens_per_frame if self.tokens_per_frame is not None else budget.cfg.tokens_per_frame
        if m is None:
            raise ValueError("the fixed budget policy needs M: set budget.tokens_per_frame "
                             "or budget.policy: {name: fixed, tokens_per_frame: M}")
        return m

    def check(self, budget: Budget) -> None:
        """``M`` must be set once (or twice alike) and fit ``N_max``."""
        own, shared = self.tokens_per_frame, budget.cfg.tokens_per_frame
        if own is not None and shared is not None and own != shared:
            raise ValueError(f"budget.policy.tokens_per_frame={own} and budget.tokens_per_frame={shared} disagree; "
                             "set one of them")
        m = self.tokens(budget)
        if m > budget.max_tokens:
            raise ValueError(f"budget.policy.tokens_per_frame={m} exceeds budget.max_tokens={budget.max_tokens}")

    def plan(self, video: VideoInfo, budget: Budget) -> FramePlan:
        """``M = achievable(tokens_per_frame)`` on ``min(T, max_frames, N_max // M)`` uniform frames."""
        return fixed_plan(video, budget, self.tokens(budget))


@hookimpl
def register_budgets(register):
    """Register :class:`FixedPolicy` as the budget policy ``fixed`` (``budget.policy: fixed``)."""
    register("fixed", FixedPolicy)
