"""Gumbel top-k pruning: fused Triton select+gather (interpreter on CPU) against the torch reference."""

import math

import pytest
import torch

from dynvlm.kernels.prune import gumbel_noise, gumbel_topk, prune_naive, prune_reference, prune_triton, select_reference
from dynvlm.plugins.compressors.prune import GumbelPrune


def _rand(*shape, seed=0, dtype=torch.float32):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) + 0.3).to(dtype)


@pytest.mark.parametrize("frames,n,c,k", [(2, 63, 96, 10), (1, 50, 33, 50), (2, 36, 300, 1), (1, 45, 130, 17)])
@pytest.mark.parametrize("with_noise", [False, True])
def test_triton_matches_reference(frames, n, c, k, with_noise):
    x = _rand(frames, n, c)
    scores = _rand(frames, n, seed=1)
    noise = gumbel_noise((frames, n), generator=torch.Generator().manual_seed(2)) if with_noise else None
    out_t, kept_t = prune_triton(x, scores, k, noise)
    out_r, kept_r = prune_reference(x, scores, k, noise)
    assert torch.equal(kept_t, kept_r)
    assert torch.equal(out_t, out_r)  # a gather: exact
    assert out_t.shape == (frames, k, c) and bool((kept_t[:, 1:] > kept_t[:, :-1]).all())
    if not with_noise:  # the kept set is the top-k of the scores
        top = scores.topk(k, dim=1).values.sort(dim=1).values
        assert torch.equal(scores.gather(1, kept_r).sort(dim=1).values, top)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_is_an_exact_copy(dtype):
    x = _rand(2, 40, 72, dtype=dtype)
    scores = _rand(2, 40, seed=1, dtype=dtype)
    out, kept = gumbel_topk(x, scores, 9, backend="triton")
    assert out.dtype == dtype
    assert torch.equal(kept, select_reference(scores, 9))
    assert torch.equal(out, prune_reference(x, scores, 9)[0])


def test_ties_go_to_the_lowest_index():
    # equal scores (including -0.0 vs +0.0): stable descending order, lower index first
    scores = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, -0.0, 2.0, 0.0]])
    x = _rand(1, 8, 4)
    expected = {1: [6], 2: [0, 6], 4: [0, 2, 3, 6], 5: [0, 1, 2, 3, 6], 6: [0, 1, 2, 3, 4, 6]}
    for k, want in expected.items():
        for backend in ("torch", "triton"):
            assert gumbel_topk(x, scores, k, backend=backend)[1].tolist() == [want], (k, backend)
    # scores all equal: the first k tokens
    flat = torch.full((2, 30), 0.25)
    assert gumbel_topk(_rand(2, 30, 8), flat, 7, backend="triton")[1].tolist() == [list(range(7))] * 2


def test_negative_and_extreme_scores():
    scores = torch.tensor([[-3.0, -1e30, 5e-39, -5e-39, 1e30, -0.5, float("-inf"), 2.0]])
    x = _rand(1, 8, 5)
    for k in range(1, 9):
        assert torch.equal(gumbel_topk(x, scores, k, backend="triton")[1], select_reference(scores, k)), k


def test_gradients():
    x = _rand(2, 33, 40).requires_grad_()
    scores = _rand(2, 33, seed=1)
    g = _rand(2, 8, 40, seed=3)
    (gt,) = torch.autograd.grad(gumbel_topk(x, scores, 8, backend="triton")[0], x, g)
    (gr,) = torch.autograd.grad(gumbel_topk(x, scores, 8, backend="torch")[0], x, g)
    assert torch.equal(gt, gr)
    assert (gt.abs().sum(-1) > 0).sum() == 2 * 8  # only kept rows get a gradient
    x64 = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    s64 = torch.randn(2, 7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: gumbel_topk(t, s64, 3, backend="torch")[0], (x64,))


def test_seeded_noise_is_reproducible():
    a = gumbel_noise((4, 500), generator=torch.Generator().manual_seed(7))
    b = gumbel_noise((4, 500), generator=torch.Generator().manual_seed(7))
    c = gumbel_noise((4, 500), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    big = gumbel_noise((200_000,), generator=torch.Generator().manual_seed(0))
    assert abs(big.mean().item() - 0.5772) < 0.02  # Euler-Mascheroni constant
    assert abs(big.var().item() - math.pi**2 / 6) < 0.05


def test_seeded_compressor_noise_is_reproducible_and_trains_the_scorer():
    torch.manual_seed(0)
    a = GumbelPrune(16, seed=11)
    b = GumbelPrune(16, seed=11)
    b.load_state_dict(a.state_dict())
    x = _rand(3, 20, 16)
    out_a = [a(x, (4, 5), 6).positions for _ in range(3)]
    out_b = [b(x, (4, 5), 6).positions for _ in range(3)]
    assert all(torch.equal(p, q) for p, q in zip(out_a, out_b))
    assert not all(torch.equal(out_a[0], p) for p in out_a[1:])  # the noise changes between calls
    a.eval()
    assert torch.equal(a(x, (4, 5), 6).positions, select_reference(a.scores(x), 6))
    a.train()
    res = a(x.requires_grad_(), (4, 5), 6)
    # the straight-through factor is exactly 1 in the forward pass: the rows are plain copies
    assert torch.equal(res.x, x.detach().gather(1, res.positions[..., None].expand(-1, -1, 16)))
    res.x.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in a.scorer.parameters())


def test_naive_matches_without_ties():
    x = _rand(2, 30, 8)
    scores = _rand(2, 30, seed=4)
    assert torch.equal(prune_naive(x, scores, 11), prune_reference(x, scores, 11)[0])


def test_bad_arguments_raise():
    x = _rand(1, 10, 4)
    s = _rand(1, 10)
    for bad in (0, 11, 1.5):
        with pytest.raises(ValueError, match=r"k must be an int in \[1, N=10\]"):
            gumbel_topk(x, s, bad)
    with pytest.raises(ValueError, match=r"scores must have shape \[F, N\]"):
        gumbel_topk(x, s[:, :9], 3)
    with pytest.raises(ValueError, match="noise must have the shape of scores"):
        gumbel_topk(x, s, 3, noise=s[0])
    with pytest.raises(ValueError, match="backend must be one of"):
        gumbel_topk(x, s, 3, backend="gpu")
