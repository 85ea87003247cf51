"""Adaptive pooling kernels: Triton (interpreter on CPU) against the PyTorch reference."""

import pytest
import torch
import torch.nn.functional as F

from dynvlm.kernels._backend import resolve_backend
from dynvlm.kernels.pool import adaptive_pool, pool_naive, pool_reference, pool_triton

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
