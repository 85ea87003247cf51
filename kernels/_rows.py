"""Row gather with a per-row scale: ``out[f, t] = coef[f, t] * src[f, idx[f, t]]``.

The backward pass of every compressor here is this operation: pooling aside, each source
token contributes to exactly one output token (ToMe: the token it merged into, with weight
``size/total``; prune: its kept slot, or nothing). A gather with no atomics keeps the
gradients deterministic.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._backend import Variant, launch, next_pow2, tl, triton, variant

__all__ = [
    "gather_rows_scaled",
    "gather_rows_scaled_reference",
    "gather_rows_scaled_triton",
    "gather_variant",
]


def gather_rows_scaled_reference(src: Tensor, idx: Tensor, coef: Tensor, out_dtype: torch.dtype) -> Tensor:
    """``src`` ``[F, M, C]``, ``idx`` ``[F, T]`` (int, in ``[0, M)``), ``coef`` ``[F, T]`` -> ``[F, T, C]``.

    Computed in fp32, returned in ``out_dtype``.
    """
    rows = src.float().gather(1, idx.long()[..., None].expand(-1, -1, src.shape[2]))
    return (rows * coef.float()[..., None]).to(out_dtype)


if triton is not None:

    @triton.jit
    def _gather_rows_scaled_kernel(
        src_ptr, idx_ptr, coef_ptr, o_ptr, T, C,
        ssf, ssm, ssc, sif, sit, scf, sct, sof, sot, soc,
        BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        f = tl.program_id(0).to(tl.int64)
        offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        tmask = offs_t < T
        cmask = offs_c < C
        idx = tl.load(idx_ptr + f * sif + offs_t * sit, mask=tmask, other=0).to(tl.int64)
        coef = tl.load(coef_ptr + f * scf + offs_t * sct, mask=tmask, other=0.0).to(tl.float32)
        # rows whose coefficient is 0 (pruned tokens) are not read at all
        m = (tmask & (coef != 0.0))[:, None] & cmask[None, :]
        rows = tl.load(src_ptr + f * ssf + idx[:, None] * ssm + offs_c[None, :] * ssc, mask=m, other=0.0)
        out = rows.to(tl.float32) * coef[:, None]
        optrs = o_ptr + f * sof + offs_t[:, None].to(tl.int64) * sot + offs_c[None, :] * soc
        tl.store(optrs, out.to(o_ptr.dtype.element_ty), mask=tmask[:, None] & cmask[None, :])


def gather_variant(src_dtype: torch.dtype, out_dtype: torch.dtype, example: str = "") -> Variant:
    """The GPU variant of the row gather for a ``src_dtype`` gradient stored as ``out_dtype``
    (indices int64, coefficients fp32; fixed blocks: small ``C`` is masked, not specialised)."""
    ptrs = {"src_ptr": src_dtype, "idx_ptr": torch.int64, "coef_ptr": torch.float32, "o_ptr": out_dtype}
    return variant("_rows._gather_rows_scaled_kernel", ptrs, {"BLOCK_T": 32, "BLOCK_C": 64}, 4, example)


def gather_rows_scaled_triton(src: Tensor, idx: Tensor, coef: Tensor, out_dtype: torch.dtype) -> Tensor:
    """Triton version of :func:`gather_rows_scaled_reference` (same arguments and result)."""
    f, t = idx.shape
    c = src.shape[2]
    # under the interpreter fp32 -> bf16 casts truncate: store fp32 and let torch round
    kernel_dtype = out_dtype if src.is_cuda else torch.float32
    out = torch.empty((f, t, c), device=src.device, dtype=kernel_dtype)
    idx, coef = idx.long(), coef.float()
    v = gather_variant(src.dtype, out_dtype)
    cpu = {"BLOCK_T": min(next_pow2(t), 1024), "BLOCK_C": min(next_pow2(c), 256)}
    blocks = v.meta() if src.is_cuda else cpu
    grid = (f, triton.cdiv(t, blocks["BLOCK_T"]), triton.cdiv(c, blocks["BLOCK_C"]))
    args = (src, idx, coef, out, t, c, *src.stride(), *idx.stride(), *coef.stride(), *out.stride())
    launch(_gather_rows_scaled_kernel, grid, args, v, cpu)
    return out.to(out_dtype)


def gather_rows_scaled(src: Tensor, idx: Tensor, coef: Tensor, out_dtype: torch.dtype, use_triton: bool) -> Tensor:
    """Dispatch between :func:`gather_rows_scaled_triton` and :func:`gather_rows_scaled_reference`."""
    if use_triton:
        return gather_rows_scaled_triton(src, idx, coef, out_dtype)
    return gather_rows_scaled_reference(src, idx, coef, out_dtype)
