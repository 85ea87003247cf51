"""Adaptive average pooling of a token grid, tokens-last: ``[F, h*w, C]`` -> ``[F, oh*ow, C]``.

Window of output row ``i`` over ``H`` input rows (likewise columns): ``[floor(i*H/OH),
ceil((i+1)*H/OH))`` -- the ``adaptive_avg_pool2d`` rule, so windows overlap when ``OH`` does
not divide ``H`` and ``OH > H`` works. Everything accumulates in fp32.

- :func:`pool_reference`: ``F.adaptive_avg_pool2d`` on the channels-last view of the input
  (no copy; eager torch divides once by the window area on that path).
- :func:`pool_naive`: what model code usually writes (transpose + contiguous NCHW copy);
  kept as the "straightforward reference" the benchmarks compare against.
- Triton forward and backward kernels reading ``[F, N, C]`` in place (any strides).
- :func:`adaptive_pool`: the dispatcher (``backend: auto|triton|torch``).
- :func:`pool_shape`: the ``oh x ow`` output grid for a token count (what the ``pool``
  compressor produces), closest in aspect to the source grid.

Every path takes any ``(oh, ow)``: non-square outputs let a pooled frame hold exactly the
planned tokens (120 on a 24x24 grid as 10x12) instead of the largest square below them.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from ._backend import (
    KERNEL_DTYPES,
    Variant,
    launch,
    next_pow2,
    out_dtype_for_kernel,
    resolve_backend,
    tl,
    triton,
    variant,
)

__all__ = [
    "GPU_MAX_SIDE",
    "adaptive_pool",
    "check_pool_args",
    "gpu_variants",
    "pool_naive",
    "pool_reference",
    "pool_shape",
    "pool_triton",
]

# widest input row / output row the Triton path takes: one program holds a [BLOCK_W, 64] fp32
# tile and a [BLOCK_OW, BLOCK_W] pooling matrix, so wider grids would spill; they run in torch
GPU_MAX_SIDE = 64


@lru_cache(maxsize=65536)
def pool_shape(tokens: int, grid: tuple[int, int], tolerance: float = 2.0) -> tuple[int, int]:
    """The ``(oh, ow)`` output grid pooling uses for at most ``tokens`` tokens on an ``h x w`` grid.

    Args:
        tokens: requested tokens per frame (clipped to ``[1, h*w]``).
        grid: ``(h, w)`` source grid.
        tolerance: how far (as a factor, ``>= 1``) the cells' aspect ``oh/ow`` may stray from
            the grid's ``h/w``; ``1.0`` on a square grid gives squares only.

    Returns:
        ``(oh, ow)`` with ``oh <= h``, ``ow <= w``, ``oh*ow <= tokens``: among the shapes whose
        aspect is within ``tolerance`` of the grid's, the one with most cells, then the aspect
        closest to the grid's, then fewer rows (10x12 before 12x10 on a square grid). When no
        shape that small is within tolerance (a very elongated grid and a tiny count), the
        closest aspect wins, then the most cells.

    Why these rules: output sides never exceed the source's, so no cell repeats a source row
    or column (no duplicated tokens); the aspect bound keeps cells roughly the source's
    shape (a 1x23 strip would average whole columns); within it the count is as close to
    ``tokens`` as possible, so the budget is spent exactly.
    """
    h, w = int(grid[0]), int(grid[1])
    if h < 1 or w < 1:
        raise ValueError(f"pool: grid must be (h, w) with positive sides, got {grid!r}")
    if not tolerance >= 1.0:
        raise ValueError(f"pool: aspect tolerance must be >= 1, got {tolerance!r}")
    t = max(1, min(int(tokens), h * w))
    best: tuple[int, float, int] | None = None  # (cells, -distance, -rows): larger is better
    closest: tuple[float, int, int] | None = None  # (-distance, cells, -rows): the fallback
    for a in range(1, min(h, t) + 1):
        b_cap = min(w, t // a)
        # cells a x b are within tolerance iff a*w <= tol * b*h and b*h <= tol * a*w
        b_lo = max(1, math.ceil(a * w / (h * tolerance) - 1e-9))
        b_hi = min(b_cap, math.floor(a * w * tolerance / h + 1e-9))
        if b_lo <= b_hi:
            key = (a * b_hi, -_aspect_distance(a, b_hi, h, w), -a)
            best = key if best is None or key > best else best
        if best is None:  # only needed while nothing is within tolerance
            # the b nearest the grid's aspect for this a: a*w/h rounded, within [1, b_cap]
            for b in {max(1, min(b_cap, math.floor(a * w / h))), max(1, min(b_cap, math.ceil(a * w / h)))}:
                key2 = (-_aspect_distance(a, b, h, w), a * b, -a)
                closest = key2 if closest is None or key2 > closest else closest
    if best is not None:
        cells, _, neg_a = best
        return -neg_a, cells // -neg_a
    assert closest is not None  # a = 1 always yields a candidate
    _, cells, neg_a = closest
    return -neg_a, cells // -neg_a


def _aspect_distance(a: int, b: int, h: int, w: int) -> float:
    """``|log(a/b) - log(h/w)|``: how far an ``a x b`` output is from the source grid's aspect."""
    return abs(math.log(a * w) - math.log(b * h))


def check_pool_args(x: Tensor, grid: tuple[int, int] | None, out_hw: tuple[int, int]) -> tuple[int, int]:
    """Validate ``x`` ``[F, N, C]``, ``grid`` and ``out_hw``; return the grid ``(h, w)``.

    ``grid=None`` means a square grid: ``N`` must then be a perfect square. Raises
    ``ValueError`` naming what is wrong.
    """
    if x.dim() != 3:
        raise ValueError(f"pool: expected x of shape [F, N, C], got shape {tuple(x.shape)}")
    n = x.shape[1]
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(
                f"pool: N={n} tokens per frame is not a perfect square, so the grid cannot be inferred; "
                "pass grid=(h, w) with h*w == N"
            )
        grid = (side, side)
    if len(grid) != 2 or int(grid[0]) < 1 or int(grid[1]) < 1:
        raise ValueError(f"pool: grid must be (h, w) with positive sides, got {grid!r}")
    h, w = int(grid[0]), int(grid[1])
    if h * w != n:
        raise ValueError(f"pool: grid {h}x{w} holds {h * w} tokens but x has N={n} tokens per frame")
    if len(out_hw) != 2 or int(out_hw[0]) < 1 or int(out_hw[1]) < 1:
        raise ValueError(f"pool: output size must be (oh, ow) with positive sides, got {out_hw!r}")
    return h, w


def pool_reference(x: Tensor, grid: tuple[int, int], out_hw: tuple[int, int]) -> Tensor:
    """``F.adaptive_avg_pool2d`` on the channels-last view of ``x``: ``[F, h*w, C]`` -> ``[F, oh*ow, C]``.

    Low-precision inputs accumulate in fp32 inside torch's kernel and are rounded once (as the
    Triton kernels do); on CPU this equals upcasting first, bitwise, at a fraction of the cost.
    """
    h, w = grid
    oh, ow = out_hw
    f, _, c = x.shape
    # [F, h, w, C] permuted to NCHW is a channels-last tensor: torch pools it without a copy
    out = F.adaptive_avg_pool2d(x.reshape(f, h, w, c).permute(0, 3, 1, 2), (oh, ow))
    return out.permute(0, 2, 3, 1).reshape(f, oh * ow, c)


def pool_naive(x: Tensor, grid: tuple[int, int], out_hw: tuple[int, int]) -> Tensor:
    """The straightforward eager version (transpose to a contiguous NCHW copy, pool, transpose back)."""
    h, w = grid
    f, _, c = x.shape
    out = F.adaptive_avg_pool2d(x.transpose(1, 2).contiguous().reshape(f, c, h, w), out_hw)
    return out.reshape(f, c, -1).transpose(1, 2).contiguous()


# ---------------------------------------------------------------------------------------------
# Triton

if triton is not None:

    @triton.jit
    def _col_pool_matrix(OW, W, BLOCK_OW: tl.constexpr, BLOCK_W: tl.constexpr):
        # P[j, c] = 1/width_j when input column c lies in output column j's window, else 0
        js = tl.arange(0, BLOCK_OW)
        cs = tl.arange(0, BLOCK_W)
        w0 = (js * W) // OW
        w1 = ((js + 1) * W + OW - 1) // OW
        inside = (cs[None, :] >= w0[:, None]) & (cs[None, :] < w1[:, None]) & (js < OW)[:, None]
        width = tl.where(js < OW, w1 - w0, 1).to(tl.float32)
        return tl.where(inside, 1.0 / width[:, None], 0.0)

    @triton.jit
    def _pool_fwd_kernel(
        x_ptr, o_ptr, H, W, OH, OW, C,
        sxf, sxn, sxc, sof, son, soc,
        BLOCK_W: tl.constexpr, BLOCK_OW: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        # one program = one output row of one frame x one block of channels: sum the window's
        # input rows (each a [W, C] tile), then pool columns with one small matmul
        pid = tl.program_id(0)
        pc = tl.program_id(1)
        f = (pid // OH).to(tl.int64)
        i = pid % OH
        h0 = (i * H) // OH
        h1 = ((i + 1) * H + OH - 1) // OH
        offs_c = pc * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = offs_c < C
        cols = tl.arange(0, BLOCK_W)
        mask = (cols < W)[:, None] & cmask[None, :]
        acc = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        for r in range(h0, h1):
            ptrs = x_ptr + f * sxf + (r * W + cols)[:, None].to(tl.int64) * sxn + offs_c[None, :] * sxc
            acc += tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        acc = acc / (h1 - h0).to(tl.float32)
        p = _col_pool_matrix(OW, W, BLOCK_OW, BLOCK_W)
        out = tl.dot(p, acc, input_precision="ieee")  # [BLOCK_OW, BLOCK_C]
        js = tl.arange(0, BLOCK_OW)
        optrs = o_ptr + f * sof + (i * OW + js)[:, None].to(tl.int64) * son + offs_c[None, :] * soc
        tl.store(optrs, out.to(o_ptr.dtype.element_ty), mask=(js < OW)[:, None] & cmask[None, :])

    @triton.jit
    def _pool_bwd_kernel(
        g_ptr, o_ptr, H, W, OH, OW, C,
        sgf, sgn, sgc, sof, son, soc,
        BLOCK_W: tl.constexpr, BLOCK_OW: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        # one program = one input row of one frame x one block of channels. Gather (no atomics)
        # the gradient rows of every output row whose window holds it, each / its height, then
        # spread over input columns with the transposed column-pooling matrix
        pid = tl.program_id(0)
        pc = tl.program_id(1)
        f = (pid // H).to(tl.int64)
        r = pid % H
        offs_c = pc * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = offs_c < C
        js = tl.arange(0, BLOCK_OW)
        mask = (js < OW)[:, None] & cmask[None, :]
        # output rows whose window can hold r: floor(r*OH/H) .. floor((r+1)*OH/H)
        i_lo = (r * OH) // H
        i_hi = tl.minimum(((r + 1) * OH) // H, OH - 1)
        acc = tl.zeros((BLOCK_OW, BLOCK_C), dtype=tl.float32)
        for i in range(i_lo, i_hi + 1):
            ih0 = (i * H) // OH
            ih1 = ((i + 1) * H + OH - 1) // OH
            ptrs = g_ptr + f * sgf + (i * OW + js)[:, None].to(tl.int64) * sgn + offs_c[None, :] * sgc
            g = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
            # 0 when r is outside this window (the candidate range is a superset)
            weight = tl.where((ih0 <= r) & (r < ih1), 1.0 / (ih1 - ih0).to(tl.float32), 0.0)
            acc += g * weight
        p = _col_pool_matrix(OW, W, BLOCK_OW, BLOCK_W)
        out = tl.dot(tl.trans(p), acc, input_precision="ieee")  # [BLOCK_W, BLOCK_C]
        cols = tl.arange(0, BLOCK_W)
        optrs = o_ptr + f * sof + (r * W + cols)[:, None].to(tl.int64) * son + offs_c[None, :] * soc
        tl.store(optrs, out.to(o_ptr.dtype.element_ty), mask=(cols < W)[:, None] & cmask[None, :])


def _gpu_blocks(w: int, ow: int) -> dict[str, int]:
    # tl.dot needs every dimension >= 16 on GPUs; channels come in fixed blocks of 64 (a
    # narrower C is masked, not specialised: fewer variants to compile), 32 when rows and
    # outputs are both 64 wide (16-bit inputs spilled on sm_80 with 64, even with 8 warps)
    block_w, block_ow = max(16, next_pow2(w)), max(16, next_pow2(ow))
    return {"BLOCK_W": block_w, "BLOCK_OW": block_ow, "BLOCK_C": 32 if block_w * block_ow >= 4096 else 64}


def _cpu_blocks(w: int, ow: int, c: int) -> dict[str, int]:
    # the interpreter pays per program, so it gets one wide channel block
    return {
        "BLOCK_W": max(16, next_pow2(w)),
        "BLOCK_OW": max(16, next_pow2(ow)),
        "BLOCK_C": max(16, min(next_pow2(c), 256)),
    }


def _variant(backward: bool, dtype: torch.dtype, w: int, ow: int, example: str = "") -> Variant:
    """GPU variant of the forward (or backward) kernel on ``dtype`` rows ``w`` wide pooled to ``ow``."""
    name, src = ("_pool_bwd_kernel", "g_ptr") if backward else ("_pool_fwd_kernel", "x_ptr")
    blocks = _gpu_blocks(w, ow)
    # 64-wide rows or outputs: three 64 x 64 fp32 tiles spilled with 4 warps on sm_80 and sm_90
    warps = 8 if max(blocks["BLOCK_W"], blocks["BLOCK_OW"]) >= 64 else 4
    return variant(f"pool.{name}", {src: dtype, "o_ptr": dtype}, blocks, warps, example)


def gpu_variants() -> list[Variant]:
    """Every variant the pool dispatcher can launch on a GPU: forward and backward, each kernel
    dtype, every input/output row width up to :data:`GPU_MAX_SIDE`. ``example`` names a
    ``(dtype, w, ow)`` that launches it."""
    out: dict[Variant, Variant] = {}
    for dtype in KERNEL_DTYPES:
        for w in range(1, GPU_MAX_SIDE + 1):
            for ow in range(1, GPU_MAX_SIDE + 1):
                for backward in (False, True):
                    v = _variant(backward, dtype, w, ow, example=f"dtype={str(dtype)[6:]} w={w} ow={ow}")
                    out.setdefault(v, v)
    return list(out.values())


def _unsupported(grid: tuple[int, int], out_hw: tuple[int, int]) -> str | None:
    if max(grid[1], out_hw[1]) > GPU_MAX_SIDE:
        return f"rows wider than {GPU_MAX_SIDE} (grid {grid}, output {out_hw})"
    return None


def _launch_fwd(x: Tensor, grid: tuple[int, int], out_hw: tuple[int, int]) -> Tensor:
    h, w = grid
    oh, ow = out_hw
    f, _, c = x.shape
    out = torch.empty((f, oh * ow, c), device=x.device, dtype=out_dtype_for_kernel(x))
    v = _variant(False, x.dtype, w, ow)
    blocks = v.meta() if x.is_cuda else _cpu_blocks(w, ow, c)
    args = (x, out, h, w, oh, ow, c, *x.stride(), *out.stride())
    launch(_pool_fwd_kernel, (f * oh, triton.cdiv(c, blocks["BLOCK_C"])), args, v, _cpu_blocks(w, ow, c))
    return out.to(x.dtype)


def _launch_bwd(g: Tensor, grid: tuple[int, int], out_hw: tuple[int, int], like: Tensor) -> Tensor:
    h, w = grid
    oh, ow = out_hw
    f, _, c = g.shape
    out = torch.empty((f, h * w, c), device=g.device, dtype=out_dtype_for_kernel(like))
    g = g.to(like.dtype)  # autograd hands the gradient in the output's dtype; make the variant certain
    v = _variant(True, like.dtype, w, ow)
    blocks = v.meta() if g.is_cuda else _cpu_blocks(w, ow, c)
    args = (g, out, h, w, oh, ow, c, *g.stride(), *out.stride())
    launch(_pool_bwd_kernel, (f * h, triton.cdiv(c, blocks["BLOCK_C"])), args, v, _cpu_blocks(w, ow, c))
    return out.to(like.dtype)


class _PoolTriton(torch.autograd.Function):
    """Autograd wrapper: Triton forward and Triton backward."""

    @staticmethod
    def forward(ctx, x: Tensor, h: int, w: int, oh: int, ow: int) -> Tensor:  # type: ignore[override]
        ctx.shape = (h, w, oh, ow)
        ctx.like = torch.empty(0, dtype=x.dtype, device=x.device)
        return _launch_fwd(x, (h, w), (oh, ow))

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        h, w, oh, ow = ctx.shape
        return _launch_bwd(g, (h, w), (oh, ow), ctx.like), None, None, None, None


def pool_triton(x: Tensor, grid: tuple[int, int], out_hw: tuple[int, int]) -> Tensor:
    """Triton adaptive pooling with autograd: ``[F, h*w, C]`` -> ``[F, oh*ow, C]`` in ``x.dtype``."""
    return _PoolTriton.apply(x, int(grid[0]), int(grid[1]), int(out_hw[0]), int(out_hw[1]))


def adaptive_pool(
    x: Tensor,
    out_hw: tuple[int, int] | int,
    grid: tuple[int, int] | None = None,
    backend: str = "auto",
) -> Tensor:
    """Adaptive average pooling of tokens-last ``x`` ``[F, h*w, C]`` to ``[F, oh*ow, C]`` (row-major cells).

    Args:
        x: ``[F, N, C]`` tokens, any float dtype, any strides.
        out_hw: ``(oh, ow)`` or one side ``s`` for ``s x s``.
        grid: ``(h, w)`` with ``h*w == N``; ``None`` infers a square grid (``N`` must be a square).
        backend: ``auto`` (Triton on CUDA, torch elsewhere), ``triton`` or ``torch``. The Triton
            path takes float32/bfloat16/float16 rows up to :data:`GPU_MAX_SIDE` wide (input and
            output); ``auto`` runs anything else in torch.

    Returns:
        ``[F, oh*ow, C]`` in ``x.dtype``, differentiable on every backend.
    """
    if isinstance(out_hw, int):
        out_hw = (out_hw, out_hw)
    grid = check_pool_args(x, grid, out_hw)
    if resolve_backend(backend, x, "pool", _unsupported(grid, out_hw)) == "triton":
        return pool_triton(x, grid, out_hw)
    return pool_reference(x, grid, out_hw)
