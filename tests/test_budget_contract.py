"""Contract every registered budget policy keeps, parametrised over the registry (third-party ones too):

for videos from a second to an hour, several encoder grids, budgets and every registered
compressor's exact counts, a plan stays within ``N_max``, keeps frames in time order inside the
video, plans counts the compressor gives exactly, and is the same plan twice in evaluation.
"""

from __future__ import annotations

import random

import pytest
import torch

import dynvlm
from dynvlm.budget import BudgetPolicy, VideoInfo
from dynvlm.data.video import sample_times

REGISTRY = dynvlm.get_registry()
POLICIES = REGISTRY.names("budget")
COMPRESSORS = REGISTRY.names("compressor")
#: keys a policy needs to be built (the built-ins that have required keys); others build with none
KEYS = {"fixed": {"tokens_per_frame": 100}, "frames": {"frames": 16}}
GRIDS = [(24, 24), (27, 27), (16, 9)]
DURATIONS = [0.0, 1.0, 7.5, 46.0, 333.3, 3600.0]  # 0.0: an image (one frame at t=0)
BUDGETS = [{"max_tokens": 1000, "min_tokens_per_frame": 1}, {"max_tokens": 12000, "min_tokens_per_frame": 16}]
MAX_FRAMES = 128


def _videos(seed: int) -> list[VideoInfo]:
    """What the data side hands the model: frames decoded at 1 fps (<= MAX_FRAMES) of a 30 fps video,
    with small random pixels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for d in DURATIONS:
        times = sample_times(d, 30.0, fps=1.0, max_frames=MAX_FRAMES) if d > 0 else [0.0]
        pixels = torch.randint(0, 256, (len(times), 6, 8, 3), generator=g, dtype=torch.uint8)
        out.append(VideoInfo(tuple(times), duration=d, fps=30.0, frames=pixels))
    return out


def _compressor_counts(name: str):
    comp = dynvlm.build_component("compressor", {"name": name}, dim=8)
    return comp.achievable


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("grid", GRIDS)
def test_every_plan_keeps_the_budget_contract(policy, grid):
    videos = _videos(seed=sum(grid))
    for compressor in COMPRESSORS:
        counts = _compressor_counts(compressor)
        for budget in BUDGETS:
            cfg = {**budget, "max_frames": MAX_FRAMES, "policy": {"name": policy, **KEYS.get(policy, {})}}
            bp = BudgetPolicy(cfg, grid, counts)
            where = f"{policy} with {compressor} on {grid}, N_max={budget['max_tokens']}"
            plans = bp.plan_batch(videos)
            assert plans == bp.plan_batch(videos), f"{where}: evaluation plans differ between two calls"
            trained = bp.plan_batch(videos, training=True, rng=random.Random(0))
            for video, plan, train_plan in zip(videos, plans, trained):
                for p in (plan, train_plan):
                    assert 1 <= len(p.indices) and p.tokens >= 1, where
                    assert p.visual_tokens <= budget["max_tokens"], f"{where}: {p.visual_tokens} visual tokens"
                    assert counts(p.tokens, grid) == p.tokens, f"{where}: {p.tokens} is not an exact count"
                    times = [video.timestamps[i] for i in p.indices]
                    assert all(b > a for a, b in zip(times, times[1:])), f"{where}: timestamps not increasing"
                    assert 0.0 <= times[0] and times[-1] <= video.duration, f"{where}: a frame outside the video"

