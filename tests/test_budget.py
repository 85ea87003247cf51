"""Budget policies: tokens per frame, frames kept and total visual tokens for short to very long videos;
the built-in policies, their keys, and the checks every plan passes."""

import random
import types

import pytest
import torch

import dynvlm
from dynvlm.budget import BudgetPolicy, FramePlan, Policy, VideoInfo, tokens_per_frame, uniform_indices
from dynvlm.config import ConfigError, load_config
from dynvlm.plugins.budgets.keyframes import frame_changes
from dynvlm.plugins.compressors.pool import AdaptivePool
from dynvlm.records import Sample, Turn
from dynvlm.registry import PluginError, Registry

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
def test_plan_with_pooling_uses_exact_counts(frames):
    pool = AdaptivePool(8)
    policy = BudgetPolicy({"max_tokens": N_MAX, "min_tokens_per_frame": 16, "max_frames": 128}, GRID, pool.achievable)
    plan = policy.plan(frames)
    expected_kept = min(frames, 128)
    wanted = min(576, N_MAX // expected_kept)
    assert len(plan.indices) == expected_kept
    assert plan.tokens == pool.achievable(wanted, GRID) <= wanted
    assert plan.visual_tokens <= N_MAX
    # a x b grids spend the budget where squares could not: 260 = 13x20 (a square gives 256), 93 -> 91 = 7x13 (81)
    assert {1: 576, 8: 576, 46: 260, 120: 100, 333: 91, 1000: 91}[frames] == plan.tokens


def test_uniform_indices_match_truncated_linspace():
    assert uniform_indices(10, 4) == [0, 3, 6, 9]
    assert uniform_indices(5, 9) == [0, 1, 2, 3, 4]
    assert uniform_indices(7, 1) == [0]


def test_training_draws_one_random_m_per_batch_within_range():
    pool = AdaptivePool(8)
    policy = BudgetPolicy({"max_tokens": 256, "min_tokens_per_frame": 4}, (8, 8), pool.achievable)
    # the exact counts pooling gives in [m_min = 4, min budget 256 // 16 = 16] on 8x8
    counts = {pool.achievable(m, (8, 8)) for m in range(4, 17)}
    assert counts == {4, 6, 8, 9, 12, 15, 16}
    rng = random.Random(0)
    seen: dict[int, int] = {}
    for _ in range(350):
        plans = policy.plan_batch([4, 16], training=True, rng=rng)
        m = {p.tokens for p in plans}
        assert len(m) == 1  # one M for the whole batch
        (value,) = m
        assert value in counts
        assert all(p.visual_tokens <= 256 for p in plans)
        seen[value] = seen.get(value, 0) + 1
    assert set(seen) == counts
    assert min(seen.values()) > 25  # uniform over the exact counts (50 each on average): none is rare
    # evaluation is deterministic: each sample gets its own budget value
    assert [p.tokens for p in policy.plan_batch([4, 16])] == [64, 16]


def test_training_draw_never_goes_below_m_min():
    # squares only: achievable(5) == 4 on 8x8, below m_min = 5, so 4 must not be drawn
    squares = AdaptivePool(8, aspect_tolerance=1.0).achievable
    assert squares(5, (8, 8)) == 4
    policy = BudgetPolicy({"max_tokens": 256, "min_tokens_per_frame": 5}, (8, 8), squares)
    rng = random.Random(0)
    drawn = {policy.plan_batch([4, 16], training=True, rng=rng)[0].tokens for _ in range(200)}
    assert drawn == {9, 16}


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
    from dynvlm.data.video import sample_indices

    for total in range(1, 80):
        for keep in range(1, total):
            assert uniform_indices(total, keep) == list(np.linspace(0, total - 1, keep).astype(int))
    assert uniform_indices(31, 23)[11] == 14  # exact division would give 15
    times = [float(t) for t in range(31)]
    assert sample_indices(times, fps=1.0, max_frames=23) == uniform_indices(31, 23)
    record = {"duration": 31.0, "native_fps": 1}
    assert frame_times(record, fps=1.0, keep=23) == [float(i) for i in uniform_indices(31, 23)]


# ---------------------------------------------------------------------------------------------
# policies as plugins: selection, keys, the built-ins


def _scene_video(cuts, frames=20, size=12, seed=0):
    """uint8 [T, size, size, 3]: a new random picture at each cut, faint random noise within a scene."""
    g = torch.Generator().manual_seed(seed)
    out, picture = [], None
    for t in range(frames):
        if t in cuts or picture is None:
            picture = torch.randint(0, 256, (size, size, 3), generator=g).float()
        noise = torch.randint(-3, 4, (size, size, 3), generator=g).float()
        out.append((picture + noise).clamp(0, 255).to(torch.uint8))
    return torch.stack(out)


def test_builtin_policies_are_registered_plugins():
    reg = dynvlm.get_registry()
    assert {"dynamic", "fixed", "frames", "keyframes"} <= set(reg.names("budget"))
    assert reg.get("budget", "keyframes").distribution == "dynvlm"
    with pytest.raises(PluginError, match=r"unknown budget 'nope'; installed budgets: .*dynamic.*keyframes"):
        BudgetPolicy({"policy": "nope"}, GRID)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"name": "frames", "frame": 8}, r"budget.policy: unknown key 'frame' for budget 'frames'; valid keys: name, frames"),
        ({"name": "frames"}, "the frames policy needs an int T >= 1"),
        ({"name": "frames", "frames": 200}, r"budget.policy.frames=200 exceeds budget.max_frames=128"),
        ({"name": "fixed"}, "the fixed budget policy needs M"),
        ({"name": "keyframes", "size": 0}, r"budget.policy.size must be an int >= 1"),
        ({"frames": 8}, "expected a policy name or a mapping with a 'name' key"),
    ],
)
def test_bad_policy_settings_name_the_key(policy, message):
    with pytest.raises(ValueError, match=message):
        BudgetPolicy({"policy": policy}, GRID)


def test_policy_keys_conflicting_with_the_budget_are_rejected():
    with pytest.raises(ValueError, match="tokens_per_frame=36 and budget.tokens_per_frame=64 disagree"):
        BudgetPolicy({"policy": {"name": "fixed", "tokens_per_frame": 36}, "tokens_per_frame": 64}, GRID)
    with pytest.raises(ValueError, match="budget.tokens_per_frame does not apply to the frames policy"):
        BudgetPolicy({"policy": {"name": "frames", "frames": 8}, "tokens_per_frame": 64}, GRID)


def test_budget_section_is_validated_when_loaded():
    with pytest.raises(ConfigError, match=r"budget.polcy: unknown key 'polcy'; valid keys of budget: .*policy"):
        load_config(overrides=["budget.polcy=fixed"])
    with pytest.raises(ConfigError, match=r"budget.policy: expected str \| dict"):
        load_config(overrides=["budget.policy=3"])
    cfg = load_config(overrides=["budget.policy.name=frames", "budget.policy.frames=8"])
    assert BudgetPolicy(cfg.budget, GRID).name == "frames"


def test_default_policy_is_dynamic_and_tokens_per_frame_still_fixes_m():
    pool = AdaptivePool(8)
    assert BudgetPolicy(None, GRID).name == "dynamic"
    legacy = BudgetPolicy({"max_tokens": 1000, "tokens_per_frame": 120}, GRID, pool.achievable)
    fixed = BudgetPolicy({"max_tokens": 1000, "policy": {"name": "fixed", "tokens_per_frame": 120}}, GRID, pool.achievable)
    for frames in (1, 5, 8, 9, 40):
        assert legacy.plan(frames) == fixed.plan(frames)
        assert fixed.plan(frames).tokens == 120 and len(fixed.plan(frames).indices) == min(frames, 1000 // 120)
    # the config is read at every plan: a callback may change M between batches
    legacy.cfg.tokens_per_frame = 36
    assert legacy.plan(40) == FramePlan(tuple(uniform_indices(40, 27)), 36)
    legacy.cfg.tokens_per_frame = None
    assert legacy.plan(40).tokens == pool.achievable(1000 // 40, GRID)


def test_fixed_and_frames_policies_do_not_draw_in_training():
    pool = AdaptivePool(8)
    for spec in ({"name": "fixed", "tokens_per_frame": 100}, {"name": "frames", "frames": 10}):
        policy = BudgetPolicy({"max_tokens": 1000, "policy": spec}, GRID, pool.achievable)
        rng = random.Random(0)
        eval_plans = policy.plan_batch([30, 12])
        assert all(policy.plan_batch([30, 12], training=True, rng=rng) == eval_plans for _ in range(20))
        assert [p.tokens for p in eval_plans] == [100, 100]  # frames: 1000 // 10 = 100 = 10x10


def test_frames_policy_keeps_its_resolution_for_short_videos():
    pool = AdaptivePool(8)
    policy = BudgetPolicy({"max_tokens": 1000, "policy": {"name": "frames", "frames": 8}}, GRID, pool.achievable)
    long, short = policy.plan(50), policy.plan(3)
    assert long.indices == tuple(uniform_indices(50, 8)) and short.indices == (0, 1, 2)
    assert long.tokens == short.tokens == pool.achievable(125, GRID) == 121  # 11x11
    assert long.visual_tokens == 968 <= 1000


def test_keyframes_takes_the_frames_where_the_video_changes():
    cuts = (5, 11, 17)
    pixels = _scene_video(cuts)
    video = VideoInfo(tuple(float(t) for t in range(20)), duration=20.0, frames=pixels)
    # dynamic keeps min(T, N_max // m_min) = 4 frames of 16 tokens
    budget = {"max_tokens": 64, "min_tokens_per_frame": 16}
    key = BudgetPolicy({**budget, "policy": "keyframes"}, (8, 8))
    uniform = BudgetPolicy(budget, (8, 8))
    assert key.plan(video) == FramePlan((0, *cuts), 16)
    assert uniform.plan(video) == FramePlan((0, 6, 12, 19), 16)
    # a cut elsewhere moves the pick with it: the pixels decide, not the positions
    assert key.plan(VideoInfo(video.timestamps, frames=_scene_video((3, 9, 14)))).indices == (0, 3, 9, 14)
    # training draws M like dynamic and keeps the same frames
    plans = key.plan_batch([video, video], training=True, rng=random.Random(1))
    assert {p.indices for p in plans} == {(0, *cuts)} and plans[0].tokens <= 16
    with pytest.raises(ValueError, match="keyframes budget policy needs the decoded frames"):
        key.plan(20)


def test_frame_changes_measures_consecutive_differences():
    pixels = _scene_video((4,), frames=8, size=40, seed=3)
    change = frame_changes(pixels, size=8)
    assert change.shape == (8,) and change[0] == float("inf")
    thumbs = torch.nn.functional.adaptive_avg_pool2d(pixels.float().mean(-1)[:, None], (8, 8)).flatten(1)
    torch.testing.assert_close(change[1:], (thumbs[1:] - thumbs[:-1]).abs().mean(1))
    assert int(change[1:].argmax()) + 1 == 4  # the cut
    # thumbnails average 5x5 pixel blocks: a new random picture moves them by ~10 grey levels, noise by < 1
    assert bool((change[1:4] < 1).all()) and float(change[4]) > 5


def test_video_info_from_a_sample_carries_duration_and_pixels():
    pixels = _scene_video((2,), frames=4)
    sample = Sample(pixels, [0.0, 1.0, 2.0, 3.0], [Turn("human", "<video>")], meta={"duration": 4.2})
    info = VideoInfo.from_sample(sample)
    assert info.timestamps == (0.0, 1.0, 2.0, 3.0) and info.duration == 4.2 and info.frames is pixels
    with pytest.raises(ValueError, match="3 timestamps for 4 frames"):
        VideoInfo((0.0, 1.0, 2.0), frames=pixels)
    # a frame count alone: frames at k / budget.fps (fps <= 0 is the reader's "every frame": 1 s apart)
    assert VideoInfo.from_count(3, fps=2.0).timestamps == (0.0, 0.5, 1.0)
    assert VideoInfo.from_count(3, fps=0.0).timestamps == (0.0, 1.0, 2.0)


class _Greedy(Policy):
    """A broken third-party policy: every frame at full resolution, whatever the budget."""

    def plan(self, video, budget):
        return FramePlan(tuple(range(video.count)), budget.n)


class _Seven(Policy):
    """A broken third-party policy: 7 tokens per frame, whatever the compressor gives."""

    def plan(self, video, budget):
        return FramePlan((0,), 7)


class _Backwards(Policy):
    """A broken third-party policy: frames out of order."""

    def plan(self, video, budget):
        return FramePlan(tuple(reversed(range(video.count))), 1)


def test_a_policy_breaking_the_contract_is_stopped_with_its_name():
    module = types.ModuleType("budget_plugin_test")
    module.register_budgets = dynvlm.hookimpl(lambda register: (register("greedy", _Greedy),
                                                               register("backwards", _Backwards),
                                                               register("seven", _Seven)))
    reg = Registry()
    reg.add_plugin(module, distribution="broken-budgets")
    greedy = BudgetPolicy({"max_tokens": 100, "policy": "greedy"}, (8, 8), registry=reg)
    with pytest.raises(RuntimeError, match=r"budget policy 'greedy' planned 4 frames x 64 tokens = 256 visual tokens, "
                                           r"more than budget.max_tokens=100"):
        greedy.plan(4)
    assert greedy.plan(1) == FramePlan((0,), 64)
    backwards = BudgetPolicy({"policy": "backwards"}, (8, 8), registry=reg)
    with pytest.raises(RuntimeError, match=r"'backwards' planned frame indices \[2, 1, 0\] for 3 frames"):
        backwards.plan(3)
    squares = AdaptivePool(8, aspect_tolerance=1.0).achievable
    assert BudgetPolicy({"policy": "seven"}, (8, 8), registry=reg).plan(3).tokens == 7  # any count is exact by default
    with pytest.raises(RuntimeError, match=r"'seven' planned 7 tokens per frame, which the compressor does not give "
                                           r"exactly on grid 8x8 \(it gives 4\)"):
        BudgetPolicy({"policy": "seven"}, (8, 8), squares, registry=reg).plan(3)


class _NotAPolicy:
    """A third-party budget plugin that forgot to subclass Policy."""

    def __init__(self) -> None:
        pass


def test_a_budget_plugin_must_be_a_policy():
    module = types.ModuleType("budget_plugin_not_policy")
    module.register_budgets = dynvlm.hookimpl(lambda register: register("plain", _NotAPolicy))
    reg = Registry()
    reg.add_plugin(module, distribution="plain-budgets", version="1.2")
    with pytest.raises(ConfigError, match=r"budget.policy: plugin 'plain' \(distribution plain-budgets==1.2\) "
                                          r"registered _NotAPolicy, which is not a dynvlm.budget.Policy subclass"):
        BudgetPolicy({"policy": "plain"}, (8, 8), registry=reg)


def test_the_model_hands_each_samples_pixels_to_the_policy(tmp_path):
    from tiny_vlm import inline_model, run_config

    from dynvlm.model.video_llm import VideoLLM

    cuts = (5, 11, 17)
    sample = Sample(_scene_video(cuts), [float(t) for t in range(20)], [Turn("human", "<video>"), Turn("gpt", "red")],
                    meta={"duration": 20.0})
    budget = {"max_tokens": 64, "min_tokens_per_frame": 16, "max_frames": 20, "policy": "keyframes"}
    model = VideoLLM(run_config(tmp_path, inline_model(), budget=budget))  # 4x4 grid: 4 frames of 16 tokens
    assert model.hparams["provenance"]["budget/keyframes"] == f"dynvlm=={dynvlm.__version__}"
    assert model.plan([sample]) == [FramePlan((0, *cuts), 16)]
    moved = Sample(_scene_video((2, 8, 13)), sample.timestamps, sample.conversation, meta=sample.meta)
    assert model.plan([sample, moved]) == [FramePlan((0, *cuts), 16), FramePlan((0, 2, 8, 13), 16)]
