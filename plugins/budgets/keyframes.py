"""``keyframes``: the dynamic rule's ``T`` frames and ``M``, the frames taken where the video changes most."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dynvlm import hookimpl
from dynvlm.budget import VideoInfo
from dynvlm.plugins.budgets.dynamic import DynamicPolicy


def frame_changes(frames: Tensor, size: int = 32) -> Tensor:
    """How much each frame differs from the one before: float32 ``[T]`` (``inf`` for the first frame).

    Args:
        frames: uint8 ``[T, H, W, 3]`` decoded frames.
        size: side of the grey thumbnails compared (area-averaged), so the signal costs
            ``T * size**2`` operations and ignores pixel noise and compression artefacts.

    Returns:
        ``[T]``: mean absolute difference (0..255) of consecutive thumbnails; frame 0 opens the
        video, so it counts as the largest change.
    """
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"keyframes: frames must be [T, H, W, 3], got {tuple(frames.shape)}")
    out = (min(size, frames.shape[1]), min(size, frames.shape[2]))
    # a few frames at a time: a float copy of a long full-size video would be large
    thumbs = torch.cat([
        F.adaptive_avg_pool2d(chunk.float().mean(dim=-1).unsqueeze(1), out).flatten(1)  # [t, size*size]
        for chunk in frames.split(16)
    ])
    diff = (thumbs[1:] - thumbs[:-1]).abs().mean(dim=1)
    return torch.cat([diff.new_full((1,), float("inf")), diff])


class KeyframePolicy(DynamicPolicy):
    """``dynamic``'s frame count and tokens per frame (training draws included), with the kept
    frames the ``T'`` decoded frames that differ most from their predecessor (the first frame
    always), in time order; equal changes prefer the earlier frame, so plans are deterministic.

    It reads the decoded frames (:attr:`dynvlm.budget.VideoInfo.frames`, uint8 ``[T, H, W, 3]``,
    at ``budget.fps``): the model passes every sample's frames to the plan, so no extra decode.

    Args:
        size: side of the grey thumbnails consecutive frames are compared on (``>= 1``).
    """

    def __init__(self, size: int = 32) -> None:
        """Keep ``size`` (thumbnail side, an int >= 1); raises ``ValueError`` otherwise."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"budget.policy.size must be an int >= 1, got {size!r}")
        self.size = size

    def select(self, video: VideoInfo, keep: int) -> list[int]:
        """The ``keep`` frames with the largest :func:`frame_changes`, in time order."""
        if keep >= video.count:
            return list(range(video.count))
        if video.frames is None:
            raise ValueError("the keyframes budget policy needs the decoded frames (VideoInfo.frames); "
                             "plan from samples, not from frame counts")
        change = frame_changes(torch.as_tensor(video.frames), self.size).tolist()
        # sort by change, descending; the index breaks ties toward earlier frames
        ranked = sorted(range(video.count), key=lambda i: (-change[i], i))
        return sorted(ranked[:keep])


@hookimpl
def register_budgets(register):
    """Register :class:`KeyframePolicy` as the budget policy ``keyframes`` (``budget.policy: keyframes``)."""
    register("keyframes", KeyframePolicy)
