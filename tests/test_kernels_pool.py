"""Adaptive pooling kernels: Triton (interpreter on CPU) against the PyTorch reference."""

import math
import random

import pytest
import torch
import torch.nn.functional as F

from dynvlm.kernels._backend import resolve_backend
from dynvlm.kernels.pool import adaptive_pool, pool_naive, pool_reference, pool_shape, pool_triton

# (frames, (h, w), (oh, ow), C): odd sides, overlapping windows, s > h, C not a power of two,
# C above one channel block (256 under the interpreter)
CASES = [
    (2, (7, 9), (4, 4), 96),
    (1, (5, 5), (7, 7), 33),
    (1, (24, 24), (10, 10), 40),
    (2, (6, 8), (3, 5), 130),
    (1, (3, 5), (2, 2), 300),
]


def _x(frames, grid, c, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(frames, grid[0] * grid[1], c, generator=g) + 0.5).to(dtype)


@pytest.mark.parametrize("frames,grid,out_hw,c", CASES)
def test_forward_fp32_matches_reference(frames, grid, out_hw, c):
    x = _x(frames, grid, c)
    ref = pool_reference(x, grid, out_hw)
    torch.testing.assert_close(pool_triton(x, grid, out_hw), ref, rtol=1e-5, atol=1e-6)
    # the reference itself is adaptive_avg_pool2d on the NCHW tensor
    nchw = F.adaptive_avg_pool2d(x.transpose(1, 2).reshape(frames, c, *grid), out_hw)
    torch.testing.assert_close(ref, nchw.reshape(frames, c, -1).transpose(1, 2), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pool_naive(x, grid, out_hw), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_forward_low_precision(dtype):
    x = _x(2, (7, 9), 72, dtype)
    out = pool_triton(x, (7, 9), (3, 4))
    assert out.dtype == dtype
    ref = pool_reference(x.float(), (7, 9), (3, 4))
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(out, pool_reference(x, (7, 9), (3, 4)), rtol=1e-2, atol=1e-2)
    # the torch path on low precision rounds the fp32 result once, like the kernel
    assert torch.equal(pool_reference(x, (7, 9), (3, 4)), ref.to(dtype))


def test_strided_input_is_read_in_place():
    # [F, C, N] storage seen as [F, N, C]: channel stride is not 1
    base = torch.randn(2, 48, 35) + 0.1
    x = base.transpose(1, 2)
    assert not x.is_contiguous()
    torch.testing.assert_close(pool_triton(x, (5, 7), (2, 3)), pool_reference(x, (5, 7), (2, 3)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("frames,grid,out_hw,c", CASES[:4])
def test_triton_gradient_matches_torch(frames, grid, out_hw, c):
    x = _x(frames, grid, c).requires_grad_()
    g = torch.randn(frames, out_hw[0] * out_hw[1], c, generator=torch.Generator().manual_seed(1))
    (gt,) = torch.autograd.grad(pool_triton(x, grid, out_hw), x, g)
    (gr,) = torch.autograd.grad(pool_reference(x, grid, out_hw), x, g)
    torch.testing.assert_close(gt, gr, rtol=1e-5, atol=1e-6)


def test_triton_gradient_bf16():
    x = _x(1, (6, 6), 40, torch.bfloat16).requires_grad_()
    g = torch.randn(1, 16, 40).to(torch.bfloat16)
    (gt,) = torch.autograd.grad(pool_triton(x, (6, 6), (4, 4)), x, g)
    xf = x.detach().float().requires_grad_()
    (gr,) = torch.autograd.grad(pool_reference(xf, (6, 6), (4, 4)), xf, g.float())
    assert gt.dtype == torch.bfloat16
    torch.testing.assert_close(gt.float(), gr, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("grid,out_hw", [((3, 4), (2, 2)), ((2, 3), (3, 3))])
def test_gradcheck_torch_path(grid, out_hw):
    x = torch.randn(2, grid[0] * grid[1], 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: adaptive_pool(t, out_hw, grid=grid, backend="torch"), (x,))


def test_dispatcher():
    x = _x(1, (4, 4), 8)
    assert resolve_backend("auto", x, "pool") == "torch"  # CPU tensor
    torch.testing.assert_close(adaptive_pool(x, 2, backend="triton"), adaptive_pool(x, 2, backend="torch"))
    with pytest.raises(ValueError, match="backend must be one of"):
        adaptive_pool(x, 2, backend="cuda")


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        adaptive_pool(_x(1, (4, 4), 8), 2, backend="triton")


def test_bad_shapes_raise_clear_errors():
    x = _x(1, (5, 10), 8)  # N = 50, not a perfect square
    with pytest.raises(ValueError, match="N=50 tokens per frame is not a perfect square"):
        adaptive_pool(x, 3)
    with pytest.raises(ValueError, match=r"grid 7x7 holds 49 tokens but x has N=50"):
        adaptive_pool(x, 3, grid=(7, 7))
    with pytest.raises(ValueError, match=r"expected x of shape \[F, N, C\]"):
        adaptive_pool(x[0], 3, grid=(5, 10))
    with pytest.raises(ValueError, match="output size must be"):
        adaptive_pool(x, 0, grid=(5, 10))
    assert adaptive_pool(x, 3, grid=(5, 10)).shape == (1, 9, 8)


# ---------------------------------------------------------------------------------------------
# non-square outputs: the a x b grids the `pool` compressor asks for (pool_shape)

GRIDS = [(24, 24), (27, 27), (16, 9), (9, 16), (2, 8)]


def _brute_force_shape(tokens, grid, tolerance):
    """pool_shape's rules written as a plain search over every (a, b)."""
    h, w = grid
    t = max(1, min(tokens, h * w))
    shapes = [(a, b) for a in range(1, h + 1) for b in range(1, w + 1) if a * b <= t]

    def dist(s):
        return abs(math.log(s[0] * w) - math.log(s[1] * h))

    inside = [s for s in shapes if dist(s) <= math.log(tolerance) + 1e-9]
    if inside:
        return max(inside, key=lambda s: (s[0] * s[1], -round(dist(s), 12), -s[0]))
    return max(shapes, key=lambda s: (-round(dist(s), 12), s[0] * s[1], -s[0]))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("tolerance", [1.0, 1.5, 2.0])
def test_pool_shape_is_the_best_shape_within_tolerance(grid, tolerance):
    h, w = grid
    for tokens in range(1, h * w + 1):
        a, b = pool_shape(tokens, grid, tolerance)
        assert 1 <= a <= h and 1 <= b <= w and a * b <= tokens, (tokens, a, b)
        assert (a, b) == _brute_force_shape(tokens, grid, tolerance), tokens
    assert pool_shape(h * w, grid, tolerance) == grid


def test_pool_shape_spends_non_square_budgets_exactly():
    assert pool_shape(120, (24, 24)) == (10, 12)  # 120 tokens, where a square gives 100
    assert pool_shape(144, (24, 24)) == (12, 12)
    assert pool_shape(100, (16, 9)) == (11, 9)
    # tolerance 1 on a square grid: squares only, the isqrt rule
    assert all(pool_shape(t, (24, 24), 1.0) == (math.isqrt(t),) * 2 for t in range(1, 577))
    with pytest.raises(ValueError, match="tolerance must be >= 1"):
        pool_shape(4, (4, 4), 0.5)


def _random_shape_cases(n, seed):
    """``n`` (grid, out_hw, C) with tokens drawn at random and non-square outputs only."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        grid = rng.choice(GRIDS[:3])
        out_hw = pool_shape(rng.randint(2, grid[0] * grid[1] - 1), grid)
        if out_hw[0] != out_hw[1]:
            cases.append((grid, out_hw, rng.choice([8, 24, 45])))
    return cases


@pytest.mark.parametrize("grid,out_hw,c", _random_shape_cases(6, seed=3))
def test_non_square_outputs_forward_and_gradient_match_reference(grid, out_hw, c):
    x = _x(2, grid, c, seed=sum(out_hw)).requires_grad_()
    ref = pool_reference(x, grid, out_hw)
    out = pool_triton(x, grid, out_hw)
    assert out.shape == (2, out_hw[0] * out_hw[1], c)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # the reference is adaptive_avg_pool2d of the NCHW frames to (oh, ow): rows then columns
    nchw = F.adaptive_avg_pool2d(x.detach().transpose(1, 2).reshape(2, c, *grid), out_hw)
    torch.testing.assert_close(ref.detach(), nchw.reshape(2, c, -1).transpose(1, 2), rtol=1e-5, atol=1e-6)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    (gt,) = torch.autograd.grad(out, x, g)
    (gr,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(gt, gr, rtol=1e-5, atol=1e-6)


def test_transposed_output_shapes_differ():
    # a x b and b x a pool different windows: the kernel must not mix up rows and columns
    x = _x(1, (24, 24), 16, seed=5)
    wide, tall = pool_triton(x, (24, 24), (10, 12)), pool_triton(x, (24, 24), (12, 10))
    torch.testing.assert_close(wide, pool_reference(x, (24, 24), (10, 12)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tall, pool_reference(x, (24, 24), (12, 10)), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(wide, tall)
