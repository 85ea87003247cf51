"""Exact tie handling for ToMe matching when tokens are bitwise identical (static video regions).

A GEMM does not promise bitwise-equal results for equal columns: BLAS and the Triton
interpreter (numpy) compute edge tiles differently, so the "equal" scores of identical tokens
differ in the last bit and argmax/argsort break the tie by that noise. Integer arithmetic has
no such problem, so identical rows are found exactly by a 64-bit hash of their bits
(``sum(bits * w) mod 2**64`` with fixed random odd ``w``: order-independent, so any backend
computes the same value), and the match results are then corrected so that:

- an A token with a bitwise-identical B token matches the lowest such B with score exactly 1;
- any other best score is clamped below 1 (cosine <= 1 is only reached by copies);
- among identical B tokens the lowest index wins;
- identical A tokens take their lowest twin's (score, match), so the stable sort orders them
  by index.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._backend import next_pow2, tl, triton

__all__ = ["resolve_ties", "row_hash", "row_hash_reference", "row_hash_triton"]

_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_WEIGHTS: dict[tuple[int, str], Tensor] = {}
_BELOW_ONE = 1.0 - 2.0**-24  # the largest fp32 below 1


def _weights(c: int, device: torch.device) -> Tensor:
    key = (c, str(device))
    if key not in _WEIGHTS:
        g = torch.Generator().manual_seed(0x70E)  # fixed: every backend and run hashes alike
        w = torch.randint(1, 2**62, (c,), generator=g, dtype=torch.int64) | 1
        _WEIGHTS[key] = w.to(device)
    return _WEIGHTS[key]


def _bits(keys: Tensor) -> Tensor:
    return keys.view(_INT_VIEW[keys.element_size()])


def row_hash_reference(keys: Tensor) -> Tensor:
    """``[F, n, C]`` float keys -> ``[F, n]`` int64 hash of each row's bits (equal rows, equal hashes)."""
    bits = _bits(keys).to(torch.int64)
    return (bits * _weights(keys.shape[2], keys.device)).sum(-1)  # wraps mod 2**64 in any order


if triton is not None:

    @triton.jit
    def _hash_kernel(b_ptr, w_ptr, o_ptr, N, C, sbf, sbn, sbc, sof, son, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        f = tl.program_id(0).to(tl.int64)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        acc = tl.zeros((BLOCK_N,), tl.int64)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            cmask = offs_c < C
            bits = tl.load(
                b_ptr + f * sbf + offs_n[:, None].to(tl.int64) * sbn + offs_c[None, :] * sbc,
                mask=nmask[:, None] & cmask[None, :],
                other=0,
            ).to(tl.int64)
            w = tl.load(w_ptr + offs_c, mask=cmask, other=0)
            acc += tl.sum(bits * w[None, :], axis=1)
        tl.store(o_ptr + f * sof + offs_n * son, acc, mask=nmask)


def row_hash_triton(keys: Tensor) -> Tensor:
    """Triton version of :func:`row_hash_reference` (bitwise the same result)."""
    f, n, c = keys.shape
    bits = _bits(keys)
    out = torch.empty((f, n), device=keys.device, dtype=torch.int64)
    block_n = 32 if keys.is_cuda else min(next_pow2(n), 1024)
    block_c = 64 if keys.is_cuda else min(next_pow2(c), 256)
    _hash_kernel[(f, triton.cdiv(n, block_n))](
        bits, _weights(c, keys.device), out, n, c, *bits.stride(), *out.stride(), BLOCK_N=block_n, BLOCK_C=block_c
    )
    return out


def row_hash(keys: Tensor, use_triton: bool) -> Tensor:
    """Dispatch between :func:`row_hash_triton` and :func:`row_hash_reference`."""
    return row_hash_triton(keys) if use_triton else row_hash_reference(keys)


def _first_twin(h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For ``h`` ``[F, m]``: (index of the lowest equal entry per position, sorted ``h``, sort order)."""
    sorted_h, order = torch.sort(h, dim=1, stable=True)  # equal hashes keep increasing index
    starts = torch.ones_like(sorted_h, dtype=torch.bool)
    starts[:, 1:] = sorted_h[:, 1:] != sorted_h[:, :-1]
    # sorted position of each run's start, carried along the run (positions grow, so cummax works);
    # the stable sort put the run's lowest index there
    at = torch.arange(h.shape[1], device=h.device).expand_as(order)
    run_first = order.gather(1, torch.where(starts, at, torch.zeros_like(at)).cummax(dim=1).values)
    first = torch.empty_like(order).scatter_(1, order, run_first)
    return first, sorted_h, order


def resolve_ties(best: Tensor, best_idx: Tensor, key_hash: Tensor) -> tuple[Tensor, Tensor]:
    """Apply the exact tie rules (module docstring) to match results.

    Args:
        best: ``[F, na]`` best cosine score of each A token (A = even positions).
        best_idx: ``[F, na]`` int64 index into B (odd positions) of that best score.
        key_hash: ``[F, n]`` int64 :func:`row_hash` of the keys.

    Returns:
        Corrected ``(best, best_idx)``, same shapes.
    """
    ha, hb = key_hash[:, 0::2].contiguous(), key_hash[:, 1::2].contiguous()
    first_a, _, _ = _first_twin(ha)
    first_b, sorted_hb, order_b = _first_twin(hb)
    # exact A == B copies: the lowest such B, score 1
    pos = torch.searchsorted(sorted_hb, ha).clamp_max(hb.shape[1] - 1)
    has_copy = sorted_hb.gather(1, pos) == ha
    copy_idx = order_b.gather(1, pos)  # leftmost equal hash = lowest index (stable sort)
    idx = torch.where(has_copy, copy_idx, first_b.gather(1, best_idx))
    score = torch.where(has_copy, torch.ones_like(best), best.clamp(max=_BELOW_ONE))
    return score.gather(1, first_a), idx.gather(1, first_a)
