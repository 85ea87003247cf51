"""Exact tie handling for ToMe matching when tokens are bitwise identical (static video regions).

A GEMM does not promise bitwise-equal results for equal columns: BLAS and the Triton
interpreter (numpy) compute edge tiles differently, so the "equal" scores of identical tokens
differ in the last bit and argmax/argsort break the tie by that noise. Integer arithmetic has
no such problem, so identical tokens are found exactly by hashing each token's bits,
``sum_c(word_c * w_c) mod 2**64`` over its bits read as int64 words, with fixed random odd ``w``
(wrapping integer sums do not depend on the summation order, so every backend agrees). Every
round of :func:`dynvlm.kernels.tome.tome_merge` hashes the bits the tokens have then, so
identity does not depend on merge history: a merged copy of a token, which the merge leaves
bitwise equal to it, ties with the token's unmerged copies. (A hash collision between different
rows, probability ~2**-64 per pair, would be taken for a tie.)

Tokens are hashed rather than keys: a learned key projection is itself a GEMM and may give
identical tokens keys that differ in the last bit. The match results are then corrected:

- an A token with an identical B token matches the lowest such B with score exactly 1;
- any other best score is clamped below 1 (cosine <= 1 is only reached by copies);
- among identical B tokens the lowest index wins;
- identical A tokens take their lowest twin's (score, match), so the stable sort orders them
  by index.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._backend import Variant, launch, next_pow2, tl, triton, variant

__all__ = ["hash_variant", "resolve_ties", "row_hash", "row_hash_reference", "row_hash_triton"]

_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_WEIGHTS: dict[tuple[int, str], Tensor] = {}
_BELOW_ONE = 1.0 - 2.0**-24  # the largest fp32 below 1


def _weights(c: int, device: torch.device) -> Tensor:
    """``[c]`` int64 odd weights, fixed so every backend and run hashes alike."""
    key = (c, str(device))
    if key not in _WEIGHTS:
        g = torch.Generator().manual_seed(0x70E)
        _WEIGHTS[key] = (torch.randint(-(2**62), 2**62, (c,), generator=g, dtype=torch.int64) | 1).to(device)
    return _WEIGHTS[key]


def _bits64(x: Tensor) -> Tensor:
    """The bits of ``x`` ``[F, n, C]`` as int64 words ``[F, n, C']``: packed words when a row's bytes
    allow (no copy; e.g. two fp32 channels per word), else one word per element."""
    if x.shape[-1] * x.element_size() % 8 == 0:
        try:
            return x.view(torch.int64)
        except RuntimeError:  # strides do not allow the packed view
            pass
    return x.view(_INT_VIEW[x.element_size()]).to(torch.int64)


def row_hash_reference(x: Tensor) -> Tensor:
    """``[F, n, C]`` float tokens -> ``[F, n]`` int64 hash of each row's bits (equal rows, equal hashes).

    ``sum(words * w) mod 2**64``: wrapping integer arithmetic, exact in any order.
    """
    bits = _bits64(x)
    w = _weights(bits.shape[-1], x.device)
    if x.is_cuda:  # no integer matrix-vector product on CUDA
        return (bits * w).sum(-1)
    return torch.mv(bits.reshape(-1, bits.shape[-1]), w).view(x.shape[:2])  # ~10x faster than mul+sum


if triton is not None:

    @triton.jit
    def _hash_kernel(
        b_ptr, w_ptr, o_ptr, N, C, sbf, sbn, sbc, sof, son,
        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        f = tl.program_id(0).to(tl.int64)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        h = tl.zeros((BLOCK_N,), tl.int64)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            cmask = offs_c < C
            bits = tl.load(
                b_ptr + f * sbf + offs_n[:, None].to(tl.int64) * sbn + offs_c[None, :] * sbc,
                mask=nmask[:, None] & cmask[None, :],
                other=0,
            )
            w = tl.load(w_ptr + offs_c, mask=cmask, other=0)
            h += tl.sum(bits * w[None, :], axis=1)
        tl.store(o_ptr + f * sof + offs_n * son, h, mask=nmask)


def hash_variant(example: str = "") -> Variant:
    """The hash kernel's only GPU variant: every input is read as int64 words."""
    ptrs = {"b_ptr": torch.int64, "w_ptr": torch.int64, "o_ptr": torch.int64}
    return variant("ties._hash_kernel", ptrs, {"BLOCK_N": 32, "BLOCK_C": 64}, 4, example)


def row_hash_triton(x: Tensor) -> Tensor:
    """Triton version of :func:`row_hash_reference` (bitwise the same result)."""
    f, n, _ = x.shape
    bits = _bits64(x)
    c = bits.shape[-1]
    out = torch.empty((f, n), device=x.device, dtype=torch.int64)
    v = hash_variant()
    cpu = {"BLOCK_N": min(next_pow2(n), 1024), "BLOCK_C": min(next_pow2(c), 256)}
    block_n = v.meta()["BLOCK_N"] if x.is_cuda else cpu["BLOCK_N"]
    args = (bits, _weights(c, x.device), out, n, c, *bits.stride(), *out.stride())
    launch(_hash_kernel, (f, triton.cdiv(n, block_n)), args, v, cpu)
    return out


def row_hash(x: Tensor, use_triton: bool) -> Tensor:
    """Dispatch between :func:`row_hash_triton` and :func:`row_hash_reference`."""
    return row_hash_triton(x) if use_triton else row_hash_reference(x)


def resolve_ties(best: Tensor, best_idx: Tensor, key_hash: Tensor) -> tuple[Tensor, Tensor]:
    """Apply the exact tie rules (module docstring) to match results.

    Args:
        best: ``[F, na]`` best cosine score of each A token (A = even positions).
        best_idx: ``[F, na]`` int64 index into B (odd positions) of that best score.
        key_hash: ``[F, n]`` int64 hashes of the current tokens' bits (:func:`row_hash`).

    Returns:
        Corrected ``(best, best_idx)``, same shapes.
    """
    f, n = key_hash.shape
    # one stable sort of all n hashes: runs of equal hashes, each in position order. Every step
    # below works on [F, n] integers (below torch's parallel grain: no thread hand-offs, which
    # cost milliseconds each on a loaded machine)
    sorted_h, order = torch.sort(key_hash, dim=1, stable=True)
    starts = torch.ones_like(sorted_h, dtype=torch.bool)
    starts[:, 1:] = sorted_h[:, 1:] != sorted_h[:, :-1]
    run = starts.cumsum(1) - 1
    none = torch.full_like(order, n)
    is_b = (order % 2).bool()
    # lowest A and lowest B position of each run (n: the run has none)
    low_b = none.scatter_reduce(1, run, torch.where(is_b, order, none), "amin")
    low_a = none.scatter_reduce(1, run, torch.where(is_b, none, order), "amin")
    run_of = torch.empty_like(run).scatter_(1, order, run)  # run of each position
    low_b_of, low_a_of = low_b.gather(1, run_of), low_a.gather(1, run_of)
    # exact A == B copies: the lowest such B, score 1
    copy_pos = low_b_of[:, 0::2]
    has_copy = copy_pos < n
    # among identical B tokens the lowest index wins
    twin_b = (low_b_of[:, 1::2] - 1) // 2
    idx = torch.where(has_copy, (copy_pos - 1) // 2, twin_b.gather(1, best_idx))
    score = torch.where(has_copy, torch.ones_like(best), best.clamp(max=_BELOW_ONE))
    # identical A tokens take their lowest twin's (score, match)
    first_a = low_a_of[:, 0::2] // 2
    return score.gather(1, first_a), idx.gather(1, first_a)
