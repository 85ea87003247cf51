"""Top-k token selection with optional Gumbel noise: keep ``k`` of ``N`` tokens per frame, in source order.

``z = scores + noise``; the ``k`` largest ``z`` are kept, ties to the lower index (stable
descending order), and the kept rows are returned in increasing source index.

- :func:`gumbel_noise`: ``g = -log(Exp(1))`` from a torch generator (reproducible; the Triton
  path takes the same tensor, since ``tl.rand`` cannot reproduce torch's stream).
- :func:`select_reference` / :func:`prune_reference`: the torch path (``topk`` threshold + tie rule).
- :func:`prune_naive`: ``topk`` + ``sort`` + ``gather``, the benchmarks' straightforward version.
- Triton: one fused kernel adds the noise, finds the k-th largest key by a 32-step radix
  (bisection) select on order-preserving integer keys -- no sort -- and gathers the kept rows.
- :func:`gumbel_topk`: the dispatcher, differentiable w.r.t. ``x`` on every backend.
"""

from __future__ import annotations

import torch
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
from ._rows import gather_rows_scaled, gather_variant

__all__ = [
    "GPU_MAX_N",
    "gpu_variants",
    "gumbel_noise",
    "gumbel_topk",
    "prune_naive",
    "prune_reference",
    "prune_triton",
    "select_reference",
]

# most tokens per frame the Triton path takes: one program holds the whole frame's keys
GPU_MAX_N = 4096


def gumbel_noise(
    shape: tuple[int, ...], device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> Tensor:
    """Standard Gumbel noise ``-log(E)``, ``E ~ Exp(1)``, fp32 of ``shape``; reproducible from ``generator``."""
    e = torch.empty(shape, device=device, dtype=torch.float32).exponential_(generator=generator)
    return -e.clamp_min(torch.finfo(torch.float32).tiny).log()


def _check(x: Tensor, scores: Tensor, k: int, noise: Tensor | None) -> None:
    if x.dim() != 3:
        raise ValueError(f"prune: expected x of shape [F, N, C], got shape {tuple(x.shape)}")
    if scores.shape != x.shape[:2]:
        raise ValueError(f"prune: scores must have shape [F, N]={tuple(x.shape[:2])}, got {tuple(scores.shape)}")
    if noise is not None and noise.shape != scores.shape:
        raise ValueError(f"prune: noise must have the shape of scores {tuple(scores.shape)}, got {tuple(noise.shape)}")
    n = x.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"prune: k must be an int in [1, N={n}], got {k!r}")


def select_reference(scores: Tensor, k: int, noise: Tensor | None = None) -> Tensor:
    """Indices ``[F, k]`` int64 (increasing) of the ``k`` largest ``scores + noise`` per row, ties to the lower index."""
    z = scores.float() if noise is None else scores.float() + noise.float()
    # k-th largest value by topk (cheaper than a full stable sort), then the pinned tie rule:
    # everything above it, plus the lowest-index tokens equal to it until k are kept
    kth = z.topk(k, dim=1, sorted=False).values.amin(1, keepdim=True)
    above = z > kth
    tie = z == kth
    need = k - above.sum(1, keepdim=True)
    keep = above | (tie & (tie.cumsum(1) <= need))
    return keep.nonzero()[:, 1].view(z.shape[0], k)  # row-major: increasing within each frame


def prune_reference(x: Tensor, scores: Tensor, k: int, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``x`` ``[F, N, C]``, ``scores``/``noise`` ``[F, N]`` -> (kept rows ``[F, k, C]``, indices ``[F, k]``)."""
    kept = select_reference(scores, k, noise)
    f, n, c = x.shape
    # index_select on the flattened rows: several times faster than gather with an expanded index
    flat = (kept + torch.arange(f, device=x.device)[:, None] * n).reshape(-1)
    return x.reshape(f * n, c).index_select(0, flat).view(f, k, c), kept


def prune_naive(x: Tensor, scores: Tensor, k: int, noise: Tensor | None = None) -> Tensor:
    """What model code usually writes: ``topk`` (unpinned ties), re-sort indices, gather."""
    z = scores if noise is None else scores + noise
    kept = z.topk(k, dim=1).indices.sort(dim=1).values
    return x.gather(1, kept[..., None].expand(-1, -1, x.shape[2]))


if triton is not None:

    @triton.jit
    def _prune_kernel(
        x_ptr, s_ptr, g_ptr, o_ptr, i_ptr, N, C, K,
        sxf, sxn, sxc, ssf, ssn, sgf, sgn, sof, sok, soc, sif, sik,
        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, CHUNK_C: tl.constexpr,
    ):  # fmt: skip
        # one program = one frame x one block of channels; the (cheap) selection is recomputed per
        # channel block so that no program waits on another. Rows are copied CHUNK_C channels at a
        # time: a [BLOCK_N, CHUNK_C] tile (and its 64-bit addresses) stays in registers
        f = tl.program_id(0).to(tl.int64)
        pc = tl.program_id(1)
        offs_n = tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        z = tl.load(s_ptr + f * ssf + offs_n * ssn, mask=nmask, other=0.0).to(tl.float32)
        z += tl.load(g_ptr + f * sgf + offs_n * sgn, mask=nmask, other=0.0).to(tl.float32)
        z = tl.where(nmask, z + 0.0, float("-inf"))  # + 0.0 turns -0.0 into +0.0 (they compare equal)
        # order-preserving int32 key: flip the magnitude bits of negative floats
        bits = z.to(tl.int32, bitcast=True)
        key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64)
        # bisection for T = the k-th largest key: largest T with count(key >= T) >= K
        lo = tl.full((), -(2**31), tl.int64)
        hi = tl.full((), 2**31 - 1, tl.int64)
        for _ in range(32):
            mid = lo + (hi - lo + 1) // 2
            enough = tl.sum((key >= mid).to(tl.int32), axis=0) >= K
            lo = tl.where(enough, mid, lo)
            hi = tl.where(enough, hi, mid - 1)
        above = key > lo
        tie = (key == lo) & nmask
        need = K - tl.sum(above.to(tl.int32), axis=0)
        # among equal keys keep the lowest indices: rank them by an inclusive prefix count
        keep = above | (tie & (tl.cumsum(tie.to(tl.int32), axis=0) <= need))
        slot = tl.cumsum(keep.to(tl.int32), axis=0) - 1
        # only channel block 0 writes the indices (a vector test: scalar-bool masks break the interpreter)
        tl.store(i_ptr + f * sif + slot * sik, offs_n.to(tl.int64), mask=keep & ((offs_n * 0 + pc) == 0))
        for c0 in range(0, BLOCK_C, CHUNK_C):
            offs_c = pc * BLOCK_C + c0 + tl.arange(0, CHUNK_C)
            m2 = keep[:, None] & (offs_c < C)[None, :]
            rows = tl.load(
                x_ptr + f * sxf + offs_n[:, None].to(tl.int64) * sxn + offs_c[None, :] * sxc, mask=m2, other=0.0
            )
            optrs = o_ptr + f * sof + slot[:, None].to(tl.int64) * sok + offs_c[None, :] * soc
            tl.store(optrs, rows.to(o_ptr.dtype.element_ty), mask=m2)


def _gpu_blocks(n: int) -> tuple[dict[str, int], int]:
    # the frame's keys in one block (>= 256: shorter frames are masked, not specialised); rows
    # copied in [BLOCK_N, CHUNK_C] tiles of <= 2048 elements: 16K tiles spilled on sm_80/sm_90
    block_n = max(256, next_pow2(n))
    return {"BLOCK_N": block_n, "BLOCK_C": 64, "CHUNK_C": max(1, 2048 // block_n)}, 4 if block_n <= 1024 else 8


def _variant(dtype: torch.dtype, n: int, example: str = "") -> Variant:
    """GPU variant of the fused kernel on ``dtype`` rows, ``n`` tokens per frame (scores and
    noise are passed as fp32; no noise is a zero tensor, one variant fewer per size)."""
    blocks, warps = _gpu_blocks(n)
    ptrs = {"x_ptr": dtype, "s_ptr": torch.float32, "g_ptr": torch.float32, "o_ptr": dtype, "i_ptr": torch.int64}
    return variant("prune._prune_kernel", ptrs, blocks, warps, example)


def gpu_variants() -> list[Variant]:
    """Every variant the prune dispatcher can launch on a GPU (forward kernel and the backward's
    row gather), for each kernel dtype and every ``N`` up to :data:`GPU_MAX_N`; ``example`` names
    a call that launches it."""
    out: dict[Variant, Variant] = {}
    for dtype in KERNEL_DTYPES:
        name = str(dtype)[6:]
        g = gather_variant(dtype, dtype, example=f"dtype={name} n=1")
        out.setdefault(g, g)
        for n in range(1, GPU_MAX_N + 1):
            v = _variant(dtype, n, example=f"dtype={name} n={n}")
            out.setdefault(v, v)
    return list(out.values())


def _prune_launch(x: Tensor, scores: Tensor, k: int, noise: Tensor | None) -> tuple[Tensor, Tensor]:
    f, n, c = x.shape
    # under the interpreter bf16 handling is unreliable: the kernel copies through fp32 there
    out = torch.empty((f, k, c), device=x.device, dtype=out_dtype_for_kernel(x))
    kept = torch.empty((f, k), device=x.device, dtype=torch.int64)
    # scores and noise in fp32 (the comparison's precision anyway): one variant per row dtype
    scores = scores.float()
    g = noise.float() if noise is not None else torch.zeros_like(scores)
    v = _variant(x.dtype, n)
    block_c = min(next_pow2(c), 256)
    cpu = {"BLOCK_N": next_pow2(n), "BLOCK_C": block_c, "CHUNK_C": block_c}
    block_c = v.meta()["BLOCK_C"] if x.is_cuda else cpu["BLOCK_C"]
    args = (x, scores, g, out, kept, n, c, k, *x.stride(), *scores.stride(), *g.stride(), *out.stride(), *kept.stride())
    launch(_prune_kernel, (f, triton.cdiv(c, block_c)), args, v, cpu)
    return out.to(x.dtype), kept


class _PruneTriton(torch.autograd.Function):
    """Autograd wrapper: fused Triton select+gather forward; backward sends each output row's
    gradient back to its source row (a Triton row gather, zero for pruned rows)."""

    @staticmethod
    def forward(ctx, x: Tensor, scores: Tensor, k: int, noise: Tensor | None):  # type: ignore[override]
        out, kept = _prune_launch(x, scores, k, noise)
        ctx.save_for_backward(kept)
        ctx.n, ctx.dtype = x.shape[1], x.dtype
        ctx.mark_non_differentiable(kept)
        return out, kept

    @staticmethod
    def backward(ctx, g: Tensor, _g_kept: Tensor | None):  # type: ignore[override]
        (kept,) = ctx.saved_tensors
        f, k = kept.shape
        slot = torch.zeros((f, ctx.n), dtype=torch.long, device=g.device)
        slot.scatter_(1, kept, torch.arange(k, device=g.device).expand(f, k))
        coef = torch.zeros((f, ctx.n), dtype=torch.float32, device=g.device).scatter_(1, kept, 1.0)
        return gather_rows_scaled(g.to(ctx.dtype), slot, coef, ctx.dtype, use_triton=True), None, None, None


def prune_triton(x: Tensor, scores: Tensor, k: int, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Triton version of :func:`prune_reference` (same arguments and results), differentiable w.r.t. ``x``."""
    return _PruneTriton.apply(x, scores, k, noise)


def gumbel_topk(
    x: Tensor, scores: Tensor, k: int, noise: Tensor | None = None, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """Keep the ``k`` tokens of largest ``scores + noise`` per frame, in source order.

    Args:
        x: ``[F, N, C]`` tokens.
        scores: ``[F, N]`` scores (any float dtype; compared in fp32).
        k: tokens to keep, in ``[1, N]``.
        noise: ``[F, N]`` additive noise (e.g. :func:`gumbel_noise`), or ``None`` for the deterministic top-k.
        backend: ``auto`` (Triton on CUDA, torch elsewhere), ``triton`` or ``torch``. The Triton
            path takes float32/bfloat16/float16 rows and up to :data:`GPU_MAX_N` tokens per frame;
            ``auto`` runs anything else in torch.

    Returns:
        (``[F, k, C]`` kept rows in ``x.dtype``, ``[F, k]`` int64 increasing source indices).
        Gradients flow to ``x`` only; the scores get theirs through a straight-through term
        the caller adds (see the ``prune`` compressor).
    """
    _check(x, scores, k, noise)
    too_long = f"{x.shape[1]} tokens per frame (at most {GPU_MAX_N})" if x.shape[1] > GPU_MAX_N else None
    if resolve_backend(backend, x, "prune", too_long) == "triton":
        return prune_triton(x, scores.detach(), k, None if noise is None else noise.detach())
    return prune_reference(x, scores.detach(), k, None if noise is None else noise.detach())
