"""``identity`` compressor: keeps every token, ignores the budget; the budget plans truthfully around it."""

import torch
from tiny_vlm import colour_samples, inline_model, run_config

import dynvlm
from dynvlm.budget import BudgetPolicy
from dynvlm.model.video_llm import VideoLLM


def _identity(dim=6):
    return dynvlm.build_component("compressor", {"name": "identity"}, dim=dim)


def test_returns_the_input_unchanged_for_every_request():
    comp = _identity()
    x = torch.randn(3, 10, 6, generator=torch.Generator().manual_seed(0))
    for tokens in (1, 4, 10):
        out = comp(x, (2, 5), tokens)
        assert out.x is x  # no copy: the same tensor
        assert out.positions.dtype == torch.int64
        assert torch.equal(out.positions, torch.arange(10).expand(3, -1))
        assert out.aux_loss is None
        assert comp.achievable(tokens, (2, 5)) == 10


def test_gradient_passes_through_unchanged():
    x = torch.randn(2, 6, 6, generator=torch.Generator().manual_seed(1)).requires_grad_()
    w = torch.randn(2, 6, 6, generator=torch.Generator().manual_seed(2))
    (_identity()(x, (2, 3), 2).x * w).sum().backward()
    torch.testing.assert_close(x.grad, w)


def test_fixed_budget_keeps_n_max_over_n_frames():
    # tokens_per_frame asks for 4, identity serves N=16: frames drop to N_max // N so the total holds
    comp = _identity()
    policy = BudgetPolicy({"max_tokens": 64, "tokens_per_frame": 4, "max_frames": 32}, (4, 4), comp.achievable)
    plan = policy.plan(20)
    assert plan.tokens == 16 and len(plan.indices) == 4 and plan.visual_tokens == 64


def test_dynamic_budget_with_identity_stays_within_n_max():
    # the dynamic rule must floor the frame count on what the compressor serves (N here), not on m_min
    comp = _identity()
    policy = BudgetPolicy({"max_tokens": 64, "min_tokens_per_frame": 1, "max_frames": 32}, (4, 4), comp.achievable)
    plan = policy.plan(20)
    assert plan.tokens == 16
    assert plan.visual_tokens <= 64


def test_video_llm_reports_n_tokens_per_kept_frame(tmp_path):
    samples = colour_samples(tmp_path / "videos", 2)  # 4 and 5 frames
    cfg = run_config(tmp_path, inline_model("identity"), budget={"max_tokens": 48, "tokens_per_frame": 5})
    torch.manual_seed(0)
    model = VideoLLM(cfg)
    plans = model.plan(samples)
    assert [(len(p.indices), p.tokens) for p in plans] == [(3, 16), (3, 16)]  # 48 // 16 frames, N = 4x4 tokens
    visual, _, _ = model.visual_features(samples, plans)
    assert [v.shape[0] for v in visual] == [48, 48]
    out = model(samples)
    assert out["visual_tokens"].item() == 48 and out["tokens_per_frame"].item() == 16
