"""``frames``: ``T`` frames given, ``M = N_max // T`` tokens per frame."""

from __future__ import annotations

from dynvlm import hookimpl
from dynvlm.budget import Budget, FramePlan, Policy, VideoInfo, thin_to_budget
from dynvlm.plugins.budgets.fixed import uniform


class FramesPolicy(Policy):
    """A fixed frame count ``T`` (uniformly spread), ``M = achievable(min(N_max // T, N))`` per frame.

    ``M`` follows the configured ``T``, not the frames a short video has: every sample is seen
    at the same detail (a video with fewer than ``T`` decoded frames keeps all of them and
    spends less). ``budget.min_tokens_per_frame`` does not apply; no random ``M`` in training.

    Args:
        frames: ``T``, in ``[1, min(budget.max_frames, budget.max_tokens)]``.
    """

    def __init__(self, frames: int | None = None) -> None:
        """Keep ``frames`` (``T``, an int >= 1; required); raises ``ValueError`` otherwise."""
        if frames is None or isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"budget.policy.frames: the frames policy needs an int T >= 1, got {frames!r} "
                             "(budget.policy: {name: frames, frames: T})")
        self.frames = frames

    def check(self, budget: Budget) -> None:
        """``T`` must fit the decoded frames and leave at least one token per frame; no fixed ``M`` beside it."""
        c = budget.cfg
        if self.frames > c.max_frames:
            raise ValueError(f"budget.policy.frames={self.frames} exceeds budget.max_frames={c.max_frames}: only "
                             f"{c.max_frames} frames are decoded per video; raise budget.max_frames")
        if self.frames > c.max_tokens:
            raise ValueError(f"budget.policy.frames={self.frames} exceeds budget.max_tokens={c.max_tokens} "
                             "(less than one token per frame)")
        if c.tokens_per_frame is not None:
            raise ValueError("budget.tokens_per_frame does not apply to the frames policy (M = N_max // frames); "
                             "use policy fixed for a fixed M")

    def plan(self, video: VideoInfo, budget: Budget) -> FramePlan:
        """``min(T, frames)`` uniform frames at ``M = achievable(N_max // frames)``."""
        m = budget.achievable(max(1, min(budget.max_tokens // self.frames, budget.n)))
        keep = min(video.count, self.frames)
        return FramePlan(thin_to_budget(uniform(video, keep), m, budget.max_tokens), m)


@hookimpl
def register_budgets(register):
    """Register :class:`FramesPolicy` as the budget policy ``frames`` (``budget.policy: frames``)."""
    register("frames", FramesPolicy)
