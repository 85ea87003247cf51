"""Budget policy: tokens per frame, frames kept and total visual tokens for short to very long videos."""

import random

import pytest

from dynvlm.budget import BudgetPolicy, tokens_per_frame, uniform_indices
from dynvlm.plugins.compressors.pool import AdaptivePool

GRID = (24, 24)  # CLIP-L/336: N = 576
N_MAX = 12000
LENGTHS = [1, 8, 46, 120, 333, 1000]


def test_clamp_rule_gives_short_videos_many_tokens_and_long_videos_few():
    got = [tokens_per_frame(t, N_MAX, 16, 576) for t in LENGTHS]
    assert got == [576, 576, 260, 100, 36, 16]  # 12000 // T, clamped to [16, 576]
    assert got == sorted(got, reverse=True)


@pytest.mark.parametrize("frames", LENGTHS)
def test_plan_stays_within_budget_with_every_frame_rule(frames):
    policy = BudgetPolicy({"max_tokens": N_MAX, "min_tokens_per_frame": 16, "max_frames": 1000}, GRID)
    plan = policy.plan(frames)
    kept = len(plan.indices)
    # frames are dropped only when m_min per frame would not fit: 12000 // 16 = 750
    assert kept == min(frames, 750)
    assert plan.tokens == min(576, max(16, N_MAX // kept))
    assert plan.visual_tokens <= N_MAX
    assert list(plan.indices) == sorted(set(plan.indices)) and plan.indices[0] == 0 and plan.indices[-1] == frames - 1


@pytest.mark.parametrize("frames", LENGTHS)
def test_plan_with_pooling_uses_exact_square_counts(frames):
    policy = BudgetPolicy({"max_tokens": N_MAX, "min_tokens_per_frame": 16, "max_frames": 128}, GRID,
                          AdaptivePool(8).achievable)
    plan = policy.plan(frames)
    expected_kept = min(frames, 128)
    side = min(24, int((N_MAX // expected_kept) ** 0.5))
    assert len(plan.indices) == expected_kept
    assert plan.tokens == side * side
    assert plan.visual_tokens <= N_MAX
    assert {1: 576, 8: 576, 46: 256, 120: 100, 333: 81, 1000: 81}[frames] == plan.tokens


def test_uniform_indices_match_truncated_linspace():
    assert uniform_indices(10, 4) == [0, 3, 6, 9]
    assert uniform_indices(5, 9) == [0, 1, 2, 3, 4]
    assert uniform_indices(7, 1) == [0]


def test_training_draws_one_random_m_per_batch_within_range():
    policy = BudgetPolicy({"max_tokens": 256, "min_tokens_per_frame": 4}, (8, 8), AdaptivePool(8).achievable)
    rng = random.Random(0)
    seen: dict[int, int] = {}
    for _ in range(300):
        plans = policy.plan_batch([4, 16], training=True, rng=rng)
        m = {p.tokens for p in plans}
        assert len(m) == 1  # one M for the whole batch
        (value,) = m
        assert value in (4, 9, 16)  # squares in [4, min budget 256 // 16 = 16]
        assert all(p.visual_tokens <= 256 for p in plans)
        seen[value] = seen.get(value, 0) + 1
    assert set(seen) == {4, 9, 16}
    assert min(seen.values()) > 60  # uniform over the exact counts: the full budget is not the rare one
    # evaluation is deterministic: each sample gets its own budget value
    assert [p.tokens for p in policy.plan_batch([4, 16])] == [64, 16]


def test_fixed_override_trades_frames_for_tokens():
    policy = BudgetPolicy({"max_tokens": 256, "tokens_per_frame": 36, "max_frames": 64}, (8, 8),
                          AdaptivePool(8).achievable)
    plans = policy.plan_batch([3, 20], training=True, rng=random.Random(0))
    assert [p.tokens for p in plans] == [36, 36]  # no random draw with an override
    assert [len(p.indices) for p in plans] == [3, 7]  # 256 // 36 = 7 frames at most


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ({"min_tokens_per_frame": 100}, "min_tokens_per_frame=100 must be in"),
        ({"max_tokens": 0}, "max_tokens must be >= 1"),
        ({"max_tokens": 8, "min_tokens_per_frame": 9}, "exceeds budget.max_tokens"),
        ({"tokens_per_frame": 0}, "tokens_per_frame=0"),
        ({"max_frames": 0}, "max_frames must be >= 1"),
        ({"bogus": 1}, "unknown key 'bogus'"),
    ],
)
def test_bad_budget_is_rejected_with_its_key(budget, message):
    with pytest.raises(ValueError, match=message):
        BudgetPolicy(budget, (8, 8))


def test_zero_frames_is_an_error():
    with pytest.raises(ValueError, match="at least one frame"):
        tokens_per_frame(0, 100, 1, 64)


def test_one_frame_thinning_rule_everywhere():
    """Reader cap, budget cap and synthetic ceilings pick the same frames (np.linspace's float steps)."""
    import numpy as np

    from dynvlm.data.questions import frame_times
    from dynvlm.video import sample_indices

    for total in range(1, 80):
        for keep in range(1, total):
            assert uniform_indices(total, keep) == list(np.linspace(0, total - 1, keep).astype(int))
    assert uniform_indices(31, 23)[11] == 14  # exact division would give 15
    times = [float(t) for t in range(31)]
    assert sample_indices(times, fps=1.0, max_frames=23) == uniform_indices(31, 23)
    record = {"duration": 31.0, "native_fps": 1}
    assert frame_times(record, fps=1.0, keep=23) == [float(i) for i in uniform_indices(31, 23)]
