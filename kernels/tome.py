"""ToMe bipartite soft matching, repeated until at most ``tokens`` tokens per frame remain.

One round on ``n`` tokens (keys ``k`` ``[F, n, Ck]``, sizes ``[F, n]``):

1. A = even positions, B = odd positions; cosine score of every A with every B.
2. Each A's best B: max score, first (lowest) B index on ties.
3. A rows ordered by best score, stable descending (ties: lower A index first); the first
   ``r = min(n - tokens, n // 2)`` merge into their B by size-weighted mean.
4. The ``n - r`` survivors are ordered by their size-weighted centroid (stable), so the
   sequence stays in source spatial order and the next round's A/B alternation is spatial.

A round has three steps, each with a torch reference and a Triton kernel (``backend``):

- match: fused ``(A @ B^T) * inv_norm`` + row max/argmax, never materialising the scores;
- plan: the round's bookkeeping on ``[F, n]`` indices and sizes (:class:`RoundPlan`: merge order,
  survivors, slots, CSR source lists). :func:`plan_round` is about 20 small torch ops (sorts,
  scatters, gathers, cumsum); :func:`plan_triton` computes the same plan, bitwise, in one launch
  (one program per frame, frames of up to :data:`PLAN_MAX_N` tokens; longer ones plan in torch);
- merge: a segmented (CSR) scatter-mean that writes the survivors in their final order.

On the Triton path a round is then the hash, match, plan and merge kernels plus a few eager
torch ops: the key norms and :func:`~dynvlm.kernels.ties.resolve_ties` (about 15 ops on
``[F, n]`` integers).

Ties between bitwise-identical tokens are made exact by :mod:`dynvlm.kernels.ties` (a GEMM
alone does not give equal columns equal bits): identity is read from the bits every token has
in the current round, whatever its merge history, and merging copies of one token gives that
token's bits back (:func:`merge_reference`), so a merged copy ties with an unmerged one. The rounds run in fp32 whatever the input
dtype (fp64 stays fp64 on the torch path); the result is rounded once to ``x.dtype``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._backend import KERNEL_DTYPES, Variant, launch, next_pow2, resolve_backend, tl, triton, variant
from ._rows import gather_rows_scaled, gather_variant
from .ties import hash_variant, resolve_ties, row_hash

__all__ = [
    "PLAN_MAX_N",
    "RoundPlan",
    "TomeResult",
    "gpu_variants",
    "match_reference",
    "match_triton",
    "merge_reference",
    "merge_triton",
    "plan_round",
    "plan_triton",
    "tome_merge",
    "tome_naive",
]


# ---------------------------------------------------------------------------------------------
# match: each A row's best B


def _acc(t: Tensor) -> torch.dtype:
    # the torch path keeps fp64 for gradcheck; everything else accumulates in fp32
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def inv_norm(keys: Tensor) -> Tensor:
    """``[F, n, Ck]`` keys -> ``[F, n]`` fp32 reciprocal L2 norms (zero keys get ``1e12``, not inf)."""
    return torch.linalg.vector_norm(keys, dim=-1, dtype=_acc(keys)).clamp_min(1e-12).reciprocal()


def match_reference(keys: Tensor, inv: Tensor) -> tuple[Tensor, Tensor]:
    """Best B for each A: ``keys`` ``[F, n, Ck]``, ``inv`` ``[F, n]`` -> (max ``[F, ceil(n/2)]`` fp32,
    argmax ``[F, ceil(n/2)]`` int64, first index on ties). Needs ``n >= 2``."""
    k = keys.to(_acc(keys))
    scores = torch.bmm(k[:, 0::2], k[:, 1::2].transpose(1, 2)).mul_(inv[:, None, 1::2])
    # 1/|a| > 0 does not change a row's argmax: apply it to the [F, na] maxima only (the kernel
    # does the same, so both round alike)
    best, idx = scores.max(dim=-1)  # documented: first maximal index on ties
    return best.mul_(inv[:, 0::2]), idx


if triton is not None:

    @triton.jit
    def _match_kernel(
        k_ptr, inv_ptr, max_ptr, idx_ptr, NA, NB, CK,
        skf, skn, skc, sif, sin, smf, sma, sxf, sxa,
        BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        # one program = a block of A rows of one frame; B is streamed in blocks, keeping only a
        # running (max, argmax) per row
        f = tl.program_id(0).to(tl.int64)
        offs_a = tl.program_id(1) * BLOCK_A + tl.arange(0, BLOCK_A)
        amask = offs_a < NA
        tok_a = (2 * offs_a).to(tl.int64)
        inv_a = tl.load(inv_ptr + f * sif + tok_a * sin, mask=amask, other=0.0)
        best = tl.full((BLOCK_A,), float("-inf"), tl.float32)
        best_idx = tl.zeros((BLOCK_A,), tl.int32)
        for j0 in range(0, NB, BLOCK_B):
            offs_b = j0 + tl.arange(0, BLOCK_B)
            bmask = offs_b < NB
            tok_b = (2 * offs_b + 1).to(tl.int64)
            acc = tl.zeros((BLOCK_A, BLOCK_B), tl.float32)
            for k0 in range(0, CK, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                kmask = offs_k < CK
                a = tl.load(
                    k_ptr + f * skf + tok_a[:, None] * skn + offs_k[None, :] * skc,
                    mask=amask[:, None] & kmask[None, :], other=0.0,
                ).to(tl.float32)  # fmt: skip
                b = tl.load(
                    k_ptr + f * skf + tok_b[:, None] * skn + offs_k[None, :] * skc,
                    mask=bmask[:, None] & kmask[None, :], other=0.0,
                ).to(tl.float32)  # fmt: skip
                acc += tl.dot(a, tl.trans(b), input_precision="ieee")
            inv_b = tl.load(inv_ptr + f * sif + tok_b * sin, mask=bmask, other=0.0)
            s = tl.where(bmask[None, :], acc * inv_b[None, :], float("-inf"))
            m, i = tl.max(s, axis=1, return_indices=True)
            # strict ">" so an earlier block keeps a tie: lowest B index wins overall
            better = m > best
            best_idx = tl.where(better, i + j0, best_idx)
            best = tl.where(better, m, best)
        tl.store(max_ptr + f * smf + offs_a * sma, best * inv_a, mask=amask)
        tl.store(idx_ptr + f * sxf + offs_a * sxa, best_idx, mask=amask)


def _match_variant(dtype: torch.dtype, example: str = "") -> Variant:
    """GPU variant of the match kernel on ``dtype`` keys: 64 x 64 A/B tiles, 8 warps, and a K step
    that keeps the (ieee fp32) tile product in registers on sm_80 and sm_90: 16 for fp32 keys
    (32 spilled on sm_80), 32 for 16-bit keys (16 spilled on sm_90). ptxas's counts:
    ``python -m dynvlm.kernels.aot``."""
    ptrs = {"k_ptr": dtype, "inv_ptr": torch.float32, "max_ptr": torch.float32, "idx_ptr": torch.int32}
    block_k = 16 if dtype == torch.float32 else 32
    return variant("tome._match_kernel", ptrs, {"BLOCK_A": 64, "BLOCK_B": 64, "BLOCK_K": block_k}, 8, example)


def match_triton(keys: Tensor, inv: Tensor, blocks: tuple[int, int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Triton version of :func:`match_reference` (same arguments and results).

    ``blocks`` overrides ``(BLOCK_A, BLOCK_B, BLOCK_K)`` under the interpreter (powers of two >= 16),
    e.g. to test the streaming over B and K blocks on small inputs.
    """
    f, n, ck = keys.shape
    na, nb = (n + 1) // 2, n // 2
    if keys.dtype not in KERNEL_DTYPES:  # e.g. fp64 keys from a key_fn: compared in fp32 anyway
        keys = keys.float()
    inv = inv.float()
    best = torch.empty((f, na), device=keys.device, dtype=torch.float32)
    idx = torch.empty((f, na), device=keys.device, dtype=torch.int32)
    v = _match_variant(keys.dtype)
    # the interpreter pays per program and per op, not per element: few, large blocks
    cpu = {
        "BLOCK_A": max(16, min(next_pow2(na), 512)),
        "BLOCK_B": max(16, min(next_pow2(nb), 512)),
        "BLOCK_K": max(16, min(next_pow2(ck), 256)),
    }
    if blocks is not None:
        cpu = dict(zip(("BLOCK_A", "BLOCK_B", "BLOCK_K"), blocks))
    block_a = v.meta()["BLOCK_A"] if keys.is_cuda else cpu["BLOCK_A"]
    args = (keys, inv, best, idx, na, nb, ck, *keys.stride(), *inv.stride(), *best.stride(), *idx.stride())
    launch(_match_kernel, (f, triton.cdiv(na, block_a)), args, v, cpu)
    return best, idx.long()


# ---------------------------------------------------------------------------------------------
# plan: which tokens merge where, and the survivors' order


@dataclass
class RoundPlan:
    """Index bookkeeping of one merge round (``n`` tokens -> ``m = n - r``), all ``[F, *]`` tensors.

    Attributes:
        kept: ``[F, m]`` int64 old index of the token that survives in each new slot (slots in
            centroid order).
        slot_of_old: ``[F, n]`` int64 new slot every old token ends up in.
        src: ``[F, r]`` int64 old indices of the merged A tokens, grouped by destination slot
            (stable: within a slot, in descending-score order).
        start: ``[F, m]`` int64 offset into ``src`` of each slot's sources; ``count``: how many.
        size: ``[F, m]`` fp32 token sizes after the round; ``psum``: ``[F, m]`` summed source indices.
        merged: ``[F, r]`` int64 old indices of merged A tokens, descending score order;
            ``merged_into``: ``[F, r]`` old index of the B token each merged into.
    """

    kept: Tensor
    slot_of_old: Tensor
    src: Tensor
    start: Tensor
    count: Tensor
    size: Tensor
    psum: Tensor
    merged: Tensor
    merged_into: Tensor


def plan_round(best: Tensor, best_idx: Tensor, size: Tensor, psum: Tensor, r: int) -> RoundPlan:
    """Decide one round from match results: ``best``/``best_idx`` ``[F, ceil(n/2)]``, ``size``/``psum``
    ``[F, n]`` fp32, ``r`` merges per frame -> :class:`RoundPlan`."""
    f, n = size.shape
    m = n - r
    # pinned tie rule: stable descending sort, equal scores keep the lower A index first
    order = torch.sort(best, dim=1, descending=True, stable=True).indices
    merged_a = order[:, :r]
    merged = 2 * merged_a
    merged_into = 2 * best_idx.gather(1, merged_a) + 1
    keep = torch.ones((f, n), dtype=torch.bool, device=size.device)
    keep.scatter_(1, merged, False)
    # survivors in old order (stable sort puts the False=0 keys, i.e. kept, first)
    survivors = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :m]
    size_all = size.scatter_add(1, merged_into, size.gather(1, merged))
    psum_all = psum.scatter_add(1, merged_into, psum.gather(1, merged))
    new_size = size_all.gather(1, survivors)
    new_psum = psum_all.gather(1, survivors)
    # final slot order: by centroid, stable (ties keep the old order)
    perm = torch.sort(new_psum / new_size, dim=1, stable=True).indices
    kept = survivors.gather(1, perm)
    new_size = new_size.gather(1, perm)
    new_psum = new_psum.gather(1, perm)
    slots = torch.arange(m, device=size.device).expand(f, m)
    slot_of_old = torch.empty((f, n), dtype=torch.long, device=size.device)
    slot_of_old.scatter_(1, kept, slots)
    src_slot = slot_of_old.gather(1, merged_into)
    slot_of_old.scatter_(1, merged, src_slot)
    by_slot = torch.sort(src_slot, dim=1, stable=True).indices
    src = merged.gather(1, by_slot)
    count = torch.zeros((f, m), dtype=torch.long, device=size.device).scatter_add_(
        1, src_slot, torch.ones_like(src_slot)
    )
    start = torch.cumsum(count, dim=1) - count
    return RoundPlan(kept, slot_of_old, src, start, count, new_size, new_psum, merged, merged_into)


# the Triton plan: one program per frame holds the frame's n tokens in one block of lanes
PLAN_MAX_N = 1024  # most tokens per frame the plan kernel takes (ViT frames have 576-729)
_PLAN_MIN_BLOCK = 64  # smaller frames are masked, not specialised: fewer variants to compile

if triton is not None:

    @triton.jit
    def _ordered(v):
        # fp32 -> int64 in [0, 2**32), ordered as torch.sort orders floats: -0.0 equals +0.0 and
        # every NaN (either sign, any payload) is one value above +inf. Integer ops only, so
        # no compiler may fold the canonicalisation away
        bits = v.to(tl.int32, bitcast=True)
        mag = bits & 0x7FFFFFFF
        bits = tl.where(mag > 0x7F800000, 0x7FC00000, tl.where(mag == 0, 0, bits))
        # negative floats: flip the magnitude bits so larger magnitudes sort lower
        return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64) + 2**31

    @triton.jit
    def _sort_keys(x, LOG: tl.constexpr):
        # ascending sort of a [2**LOG] int64 vector by a bitonic network. Only values are sorted
        # (each key carries its index), so a compare-exchange keeps the min or the max of a lane
        # and its partner, fetched by tl.gather: flat 1-D code that compiles several times faster
        # than tl.sort's hypercube reshapes, and that the interpreter runs in numpy (tl.sort's xor
        # reduction runs per element in Python there, about 10 s per program at 1024 lanes)
        lane = tl.arange(0, 2**LOG)
        for s in tl.static_range(LOG):
            # merge sorted runs of 2**s lanes into runs of 2**(s+1): compare each lane with its
            # mirror in the run pair (which makes both halves bitonic), then with the lane 2**t
            # away for t = s-1..0; the upper lane of every pair keeps the larger key
            for i in tl.static_range(s + 1):
                if i == 0:
                    partner = tl.gather(x, lane ^ ((2 << s) - 1), 0)
                    upper = (lane & (1 << s)) != 0
                else:
                    partner = tl.gather(x, lane ^ (1 << (s - i)), 0)
                    upper = (lane & (1 << (s - i))) != 0
                x = tl.where((x < partner) != upper, x, partner)
        return x

    @triton.jit
    def _plan_kernel(
        best_ptr, bidx_ptr, size_ptr, psum_ptr,
        kept_ptr, slot_ptr, src_ptr, start_ptr, count_ptr, osize_ptr, opsum_ptr, merged_ptr, into_ptr,
        N, R, sbf, sba, sif, sia, ssf, ssn, spf, spn,
        BLOCK: tl.constexpr, LOG_BLOCK: tl.constexpr,
    ):  # fmt: skip
        # one program = one frame; lane i is token i (or output position i). A sorting network is
        # not stable, so every sort is of distinct int64 keys: an ordered integer image of the
        # value in the high bits, the token (or A) index in the low 10 bits: torch's stable order,
        # exactly, ties included. Permutations are inverted through memory: a scatter store, a
        # barrier (every thread of the program), a gather load. Outputs are contiguous [F, *] rows
        f = tl.program_id(0).to(tl.int64)
        M = N - R
        lane = tl.arange(0, BLOCK)
        valid = lane < N
        is_a = valid & (lane % 2 == 0)
        big = tl.full((BLOCK,), 2**63 - 1, tl.int64)  # masked lanes sort last
        size = tl.load(size_ptr + f * ssf + lane * ssn, mask=valid, other=1.0)
        psum = tl.load(psum_ptr + f * spf + lane * spn, mask=valid, other=0.0)
        best = tl.load(best_ptr + f * sbf + (lane // 2) * sba, mask=is_a, other=0.0)
        dst = 2 * tl.load(bidx_ptr + f * sif + (lane // 2) * sia, mask=is_a, other=0) + 1

        # 1. merge order: best descending, equal scores lower A first. key1 < 2**42
        key1 = tl.where(is_a, ((2**32 - 1 - _ordered(best)) << 10) | (lane // 2), big)
        s1 = _sort_keys(key1, LOG_BLOCK)
        last = tl.max(tl.where(lane == R - 1, s1, -1), axis=0)  # the r-th key
        is_m = key1 <= last  # the r first A tokens merge (keys are unique)
        first = lane < R
        a_j = s1 & 1023
        tl.store(merged_ptr + f * R + lane, 2 * a_j, mask=first)
        into = 2 * tl.load(bidx_ptr + f * sif + a_j * sia, mask=first, other=0) + 1
        tl.store(into_ptr + f * R + lane, into, mask=first)

        # 2. each destination's sources in merge order, listed in src (scratch until step 5): the
        # order torch's scatter_add adds them in, so the sums below round alike for any sizes
        s2 = _sort_keys(tl.where(is_m, (dst << 42) | key1, big), LOG_BLOCK)
        tl.store(src_ptr + f * R + lane, 2 * (s2 & 1023), mask=first)
        n_src = tl.histogram(dst.to(tl.int32), BLOCK, mask=is_m)  # per destination token
        at = tl.cumsum(n_src, axis=0) - n_src
        tl.debug_barrier()
        new_size = size
        new_psum = psum
        for k in range(0, tl.max(n_src, axis=0)):
            more = n_src > k
            s = tl.load(src_ptr + f * R + at + k, mask=more, other=0)
            # where(), not + 0.0 on the other lanes: -0.0 + 0.0 would change the bits
            new_size = tl.where(more, new_size + tl.load(size_ptr + f * ssf + s * ssn, mask=more, other=0.0), new_size)
            new_psum = tl.where(more, new_psum + tl.load(psum_ptr + f * spf + s * spn, mask=more, other=0.0), new_psum)

        # 3. slots: survivors by centroid (IEEE division, as torch's), equal centroids in old order
        keep = valid & ~is_m
        centroid = tl.math.div_rn(new_psum, new_size)
        s3 = _sort_keys(tl.where(keep, (_ordered(centroid) << 10) | lane, big), LOG_BLOCK)
        out = lane < M
        kept = s3 & 1023
        tl.store(kept_ptr + f * M + lane, kept, mask=out)
        tl.store(slot_ptr + f * N + kept, lane.to(tl.int64), mask=out)
        tl.debug_barrier()

        # 4. each survivor reads its slot and writes its sums there; a merged token takes its
        # destination's slot (merged tokens are neither survivors nor destinations: no overlap)
        slot = tl.load(slot_ptr + f * N + lane, mask=keep, other=0)
        tl.store(osize_ptr + f * M + slot, new_size, mask=keep)
        tl.store(opsum_ptr + f * M + slot, new_psum, mask=keep)
        dst_slot = tl.load(slot_ptr + f * N + dst, mask=is_m, other=0)
        tl.store(slot_ptr + f * N + lane, dst_slot, mask=is_m)

        # 5. sources grouped by slot, in merge order within a slot (overwrites step 2's list, whose
        # reads ended before the barrier); CSR offsets from a histogram of slots
        s4 = _sort_keys(tl.where(is_m, (dst_slot << 42) | key1, big), LOG_BLOCK)
        tl.store(src_ptr + f * R + lane, 2 * (s4 & 1023), mask=first)
        count = tl.histogram(dst_slot.to(tl.int32), BLOCK, mask=is_m)
        tl.store(count_ptr + f * M + lane, count.to(tl.int64), mask=out)
        tl.store(start_ptr + f * M + lane, (tl.cumsum(count, axis=0) - count).to(tl.int64), mask=out)


def _plan_variant(n: int, example: str = "") -> Variant:
    """GPU variant of the plan kernel for ``n`` tokens per frame: one block of ``max(64, next_pow2(n))``
    lanes, one lane per thread (two at 1024: 16 warps at most). With 4 warps ptxas spilled 4-24 B
    at 512-1024 lanes; the sorts' partner exchanges go through shared memory at any width.
    Inputs fp32 scores/sizes/sums and int64 matches; outputs int64 and fp32."""
    block = max(_PLAN_MIN_BLOCK, next_pow2(n))
    warps = min(16, block // 32)
    ptrs = {"best_ptr": torch.float32, "bidx_ptr": torch.int64, "size_ptr": torch.float32, "psum_ptr": torch.float32}
    ptrs |= {k: torch.int64 for k in ("kept_ptr", "slot_ptr", "src_ptr", "start_ptr", "count_ptr")}
    ptrs |= {"osize_ptr": torch.float32, "opsum_ptr": torch.float32, "merged_ptr": torch.int64, "into_ptr": torch.int64}
    return variant("tome._plan_kernel", ptrs, {"BLOCK": block, "LOG_BLOCK": block.bit_length() - 1}, warps, example)


def plan_triton(best: Tensor, best_idx: Tensor, size: Tensor, psum: Tensor, r: int) -> RoundPlan:
    """Triton version of :func:`plan_round` (same arguments and result, bitwise): one launch per round.

    ``best`` ``[F, ceil(n/2)]`` fp32, ``best_idx`` ``[F, ceil(n/2)]`` int64, ``size``/``psum``
    ``[F, n]`` fp32 with ``2 <= n <=`` :data:`PLAN_MAX_N`, ``1 <= r <= n // 2``.

    Each destination's sizes and position sums are added in merge order, as torch's CPU
    ``scatter_add`` adds them, so the plan equals the CPU reference bitwise for any fp32 values.
    torch on CUDA adds with atomics in no fixed order: equal bits there hold for integer-valued
    sizes and sums below 2**24, which is what :func:`tome_merge` passes (counts, index sums).
    """
    f, n = size.shape
    if not 2 <= n <= PLAN_MAX_N or not 1 <= r <= n // 2:
        raise ValueError(f"plan_triton: needs 2 <= n <= {PLAN_MAX_N} and 1 <= r <= n // 2, got n={n}, r={r}")
    if best.dtype != torch.float32 or size.dtype != torch.float32 or psum.dtype != torch.float32:
        raise ValueError("plan_triton: best, size and psum must be float32")
    m = n - r
    ints = {k: torch.empty((f, w), device=size.device, dtype=torch.int64) for k, w in
            (("kept", m), ("slot_of_old", n), ("src", r), ("start", m), ("count", m), ("merged", r), ("merged_into", r))}  # fmt: skip
    new_size = torch.empty((f, m), device=size.device, dtype=torch.float32)
    new_psum = torch.empty_like(new_size)
    best_idx = best_idx.long()
    v = _plan_variant(n)
    args = (
        best, best_idx, size, psum, ints["kept"], ints["slot_of_old"], ints["src"], ints["start"], ints["count"],
        new_size, new_psum, ints["merged"], ints["merged_into"], n, r,
        *best.stride(), *best_idx.stride(), *size.stride(), *psum.stride(),
    )  # fmt: skip
    meta = dict(v.constexprs)
    launch(_plan_kernel, (f,), args, v, meta)
    return RoundPlan(size=new_size, psum=new_psum, **ints)


# ---------------------------------------------------------------------------------------------
# merge: size-weighted scatter-mean into the new slots


def merge_reference(x: Tensor, weight: Tensor, plan: RoundPlan) -> Tensor:
    """Size-weighted means: ``x`` ``[F, n, C]``, ``weight`` ``[F, n]`` -> ``[F, m, C]`` fp32 (fp64 stays fp64).

    Slot ``t`` = (sum of ``weight*x`` over its survivor and its sources) / (sum of their
    weights), computed as ``own - sum_s (w_s / W) * (own - x_s)``: the same mean, and bitwise
    the survivor when every source equals it, so a merged copy of a token stays identical to
    that token's other copies (the tie rule compares bits).
    """
    f, n, c = x.shape
    m = plan.kept.shape[1]
    dt = _acc(x)
    w = weight.to(dt)
    r = plan.src.shape[1]
    # rows are addressed in the flattened [F*n, C] view: index_select is several times faster
    # than gather with an expanded index, and a scatter over all n rows slower still (CPU).
    # plan.src is grouped by slot, so index_add_ sees sorted indices. Few large ops: on a loaded
    # machine each multi-threaded op can wait milliseconds for its second thread
    base = torch.arange(f, device=x.device)[:, None]
    rows = x.reshape(f * n, c)
    src_slot = plan.slot_of_old.gather(1, plan.src)
    w_own, w_src = w.gather(1, plan.kept), w.gather(1, plan.src)
    total = w_own.scatter_add(1, src_slot, w_src)
    coef = (w_src / total.gather(1, src_slot)).reshape(-1, 1)
    slot_rows = (src_slot + base * m).reshape(-1)
    # survivors, sources and each source's survivor in one gather
    idx = torch.cat([plan.kept, plan.src, plan.kept.gather(1, src_slot)], 1).add_(base * n)
    idx = torch.cat([idx[:, :m].reshape(-1), idx[:, m : m + r].reshape(-1), idx[:, m + r :].reshape(-1)])
    both = rows.index_select(0, idx).to(dt)
    own, src, own_of_src = both[: f * m], both[f * m : f * (m + r)], both[f * (m + r) :]
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        # autograd: out of place (the three row sets are views of one buffer)
        return own.index_add(0, slot_rows, (own_of_src - src) * coef, alpha=-1).view(f, m, c)
    # one fresh buffer: in place saves passes over the rows
    pull = own_of_src.sub_(src).mul_(coef)
    return own.index_add_(0, slot_rows, pull, alpha=-1).view(f, m, c)


if triton is not None:

    @triton.jit
    def _merge_kernel(
        x_ptr, w_ptr, kept_ptr, src_ptr, start_ptr, count_ptr, o_ptr, M, C,
        sxf, sxn, sxc, swf, swn, skf, skm, ssf, ssr, stf, stm, scf, scm, sof, som, soc,
        BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        # one program = a block of new slots x a block of channels of one frame; each slot reads
        # its survivor row and its (CSR-listed) merged sources: a gather, so no atomics
        f = tl.program_id(0).to(tl.int64)
        offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        tmask = offs_t < M
        cmask = offs_c < C
        m2 = tmask[:, None] & cmask[None, :]
        own = tl.load(kept_ptr + f * skf + offs_t * skm, mask=tmask, other=0).to(tl.int64)
        w_own = tl.load(w_ptr + f * swf + own * swn, mask=tmask, other=1.0).to(tl.float32)
        row = tl.load(x_ptr + f * sxf + own[:, None] * sxn + offs_c[None, :] * sxc, mask=m2, other=0.0)
        row = row.to(tl.float32)
        # own - sum_s w_s (own - x_s) / W: the mean, and exactly `own` when every source equals it
        acc = tl.zeros((BLOCK_T, BLOCK_C), tl.float32)
        total = w_own
        start = tl.load(start_ptr + f * stf + offs_t * stm, mask=tmask, other=0)
        count = tl.load(count_ptr + f * scf + offs_t * scm, mask=tmask, other=0)
        for k in range(0, tl.max(count, axis=0)):
            valid = tmask & (k < count)
            s = tl.load(src_ptr + f * ssf + (start + k) * ssr, mask=valid, other=0).to(tl.int64)
            ws = tl.load(w_ptr + f * swf + s * swn, mask=valid, other=0.0).to(tl.float32)
            vs = tl.load(
                x_ptr + f * sxf + s[:, None] * sxn + offs_c[None, :] * sxc,
                mask=valid[:, None] & cmask[None, :],
                other=0.0,
            )
            acc += tl.where(valid[:, None], (row - vs.to(tl.float32)) * ws[:, None], 0.0)
            total += ws
        out = row - acc / total[:, None]
        tl.store(o_ptr + f * sof + offs_t[:, None].to(tl.int64) * som + offs_c[None, :] * soc, out, mask=m2)


def _merge_variant(dtype: torch.dtype, example: str = "") -> Variant:
    """GPU variant of the merge kernel on ``dtype`` rows (weights fp32, CSR lists int64, output fp32)."""
    ptrs = {"x_ptr": dtype, "w_ptr": torch.float32}
    ptrs |= {k: torch.int64 for k in ("kept_ptr", "src_ptr", "start_ptr", "count_ptr")}
    ptrs["o_ptr"] = torch.float32
    return variant("tome._merge_kernel", ptrs, {"BLOCK_T": 16, "BLOCK_C": 128}, 4, example)


def _merge_launch(x: Tensor, weight: Tensor, plan: RoundPlan) -> Tensor:
    f, _, c = x.shape
    m = plan.kept.shape[1]
    out = torch.empty((f, m, c), device=x.device, dtype=torch.float32)
    v = _merge_variant(x.dtype)
    cpu = {"BLOCK_T": min(next_pow2(m), 1024), "BLOCK_C": min(next_pow2(c), 256)}
    blocks = v.meta() if x.is_cuda else cpu
    w = weight.float()
    grid = (f, triton.cdiv(m, blocks["BLOCK_T"]), triton.cdiv(c, blocks["BLOCK_C"]))
    args = (
        x, w, plan.kept, plan.src, plan.start, plan.count, out, m, c,
        *x.stride(), *w.stride(), *plan.kept.stride(), *plan.src.stride(), *plan.start.stride(),
        *plan.count.stride(), *out.stride(),
    )  # fmt: skip
    launch(_merge_kernel, grid, args, v, cpu)
    return out


class _MergeTriton(torch.autograd.Function):
    """Autograd wrapper of the Triton merge.

    Backward: every old token feeds exactly one slot, so ``dx[i] = g[slot(i)] * w[i] / W[slot(i)]``
    (a Triton row gather); ``dw[i] = <g[slot(i)], x[i] - out[slot(i)]> / W[slot(i)]`` in torch,
    only when the weights need a gradient (learned keys).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, plan: RoundPlan) -> Tensor:  # type: ignore[override]
        out = _merge_launch(x, weight, plan)
        ctx.plan = plan
        ctx.save_for_backward(x, weight, out)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, weight, out = ctx.saved_tensors
        plan: RoundPlan = ctx.plan
        w = weight.float()
        total = torch.zeros_like(plan.size).scatter_add(1, plan.slot_of_old, w).gather(1, plan.slot_of_old)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = gather_rows_scaled(g.float(), plan.slot_of_old, w / total, x.dtype, use_triton=True)
        if ctx.needs_input_grad[1]:
            c = x.shape[2]
            idx = plan.slot_of_old[..., None].expand(-1, -1, c)
            dw = ((g.gather(1, idx) * (x.float() - out.gather(1, idx))).sum(-1) / total).to(weight.dtype)
        return dx, dw, None


def merge_triton(x: Tensor, weight: Tensor, plan: RoundPlan) -> Tensor:
    """Triton version of :func:`merge_reference` (same arguments and result), differentiable."""
    return _MergeTriton.apply(x, weight, plan)


# ---------------------------------------------------------------------------------------------
# the whole compressor


@dataclass
class TomeResult:
    """Output of :func:`tome_merge`: ``x`` ``[F, M, C]`` (input dtype), ``positions`` ``[F, M]`` fp32
    size-weighted centroid index (non-decreasing), ``size`` ``[F, M]`` fp32 source tokens per output."""

    x: Tensor
    positions: Tensor
    size: Tensor


def tome_merge(
    x: Tensor,
    tokens: int,
    key_fn: Callable[[Tensor], Tensor] | None = None,
    backend: str = "auto",
    key_grad: bool = False,
) -> TomeResult:
    """Merge ``x`` ``[F, N, C]`` by repeated bipartite soft matching until at most ``tokens`` per frame remain.

    Args:
        x: ``[F, N, C]`` tokens in source (row-major) order.
        tokens: target count in ``[1, N]``; the result has exactly ``min(N, tokens)`` tokens.
        key_fn: maps the current fp32 tokens ``[F, n, C]`` to keys ``[F, n, Ck]``; ``None`` = the tokens.
        backend: ``auto`` (Triton on CUDA, torch elsewhere), ``triton`` or ``torch``.
        key_grad: give ``key_fn`` a gradient through a straight-through factor on each merged
            token's weight (``1 + s - s.detach()``, ``s`` its match score): values are unchanged.

    Returns:
        :class:`TomeResult`. Every backend is differentiable w.r.t. ``x``.
    """
    if x.dim() != 3:
        raise ValueError(f"tome: expected x of shape [F, N, C], got shape {tuple(x.shape)}")
    f, n, _ = x.shape
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= n:
        raise ValueError(f"tome: tokens must be an int in [1, N={n}], got {tokens!r}")
    use_triton = resolve_backend(backend, x, "tome") == "triton"
    match = match_triton if use_triton else match_reference
    merge = merge_triton if use_triton else merge_reference
    size = torch.ones((f, n), device=x.device, dtype=_acc(x))
    psum = torch.arange(n, device=x.device, dtype=_acc(x)).expand(f, n)
    # the Triton kernels read low-precision rows themselves; the torch path upcasts once here
    # rather than in each step of the first round (the rounds run in fp32 either way)
    cur = x if use_triton else x.to(_acc(x))
    while n > tokens:
        r = min(n - tokens, n // 2)
        keys = cur if key_fn is None else key_fn(cur.to(_acc(x)))
        k = keys.detach()
        # ties are decided from the bits the tokens have now, whatever their merge history
        token_hash = row_hash(cur.detach(), use_triton)
        best, best_idx = resolve_ties(*match(k, inv_norm(k)), token_hash)
        # Triton: the round's bookkeeping in one launch; a frame over PLAN_MAX_N tokens (a first
        # round on a large grid) plans in torch
        plan = (plan_triton if use_triton and n <= PLAN_MAX_N else plan_round)(best, best_idx, size, psum, r)
        weight = size
        if key_grad and keys.requires_grad:
            weight = size.scatter(1, plan.merged, size.gather(1, plan.merged) * _st_factor(keys, plan))
        cur = merge(cur, weight, plan)
        size, psum, n = plan.size, plan.psum, n - r
    return TomeResult(cur.to(x.dtype), psum / size, size)


def _st_factor(keys: Tensor, plan: RoundPlan) -> Tensor:
    """``[F, r]`` ones whose gradient is that of each merged pair's cosine score."""
    c = keys.shape[2]
    a = keys.gather(1, plan.merged[..., None].expand(-1, -1, c)).float()
    b = keys.gather(1, plan.merged_into[..., None].expand(-1, -1, c)).float()
    s = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return 1.0 + (s - s.detach())


def gpu_variants() -> list[Variant]:
    """Every variant :func:`tome_merge` can launch on a GPU: for each kernel dtype of ``x``, the
    hash, match and merge kernels (the first round reads ``x``'s dtype, later ones fp32) and the
    backward's row gather (fp32 gradient into ``x``'s dtype); the plan kernel for each block
    width (any dtype: it reads fp32 scores and sizes). ``example`` names a call: for a plan
    variant, ``n`` tokens per frame whose first round launches it."""
    out: dict[Variant, Variant] = {}
    for dtype in KERNEL_DTYPES:
        name = str(dtype)[6:]
        for v in (
            hash_variant(example=f"dtype={name}"),
            _match_variant(dtype, example=f"dtype={name}"),
            _merge_variant(dtype, example=f"dtype={name}"),
            gather_variant(torch.float32, dtype, example=f"dtype={name}"),
        ):
            out.setdefault(v, v)
    block = _PLAN_MIN_BLOCK
    while block <= PLAN_MAX_N:  # n = 3/4 of the block + 1: odd, and only this block fits it
        v = _plan_variant(block, example=f"dtype=float32 n={3 * block // 4 + 1}")
        out.setdefault(v, v)
        block *= 2
    return list(out.values())


# ---------------------------------------------------------------------------------------------
# baseline for benchmarks


def tome_naive(x: Tensor, tokens: int) -> Tensor:
    """ToMe as usually written (normalise, full score matrix, argsort, gather/scatter_reduce, cat),
    repeated until ``tokens`` remain; the benchmarks' "straightforward reference".

    ``[F, N, C]`` -> ``[F, tokens, C]`` in ToMe's order (unmerged A then B), not spatial order.
    """
    f, n, c = x.shape
    size = torch.ones((f, n, 1), device=x.device, dtype=x.dtype)
    while n > tokens:
        r = min(n - tokens, n // 2)
        metric = x / x.norm(dim=-1, keepdim=True)
        a, b = metric[:, ::2], metric[:, 1::2]
        scores = a @ b.transpose(-1, -2)
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx, src_idx = edge_idx[:, r:], edge_idx[:, :r]
        dst_idx = node_idx[..., None].gather(1, src_idx)
        xs = x * size
        merged = []
        for t in (xs, size):
            ta, tb = t[:, ::2], t[:, 1::2]
            d = t.shape[-1]
            unm = ta.gather(1, unm_idx.expand(-1, -1, d))
            src = ta.gather(1, src_idx.expand(-1, -1, d))
            tb = tb.scatter_reduce(1, dst_idx.expand(-1, -1, d), src, reduce="sum")
            merged.append(torch.cat([unm, tb], dim=1))
        x, size = merged[0] / merged[1], merged[1]
        n -= r
    return x
