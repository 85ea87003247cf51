"""ToMe kernels: fused match, round plan and scatter-mean merge (Triton, interpreter on CPU) against the torch reference."""

from fractions import Fraction

import pytest
import torch

from dynvlm.kernels import tome
from dynvlm.kernels._backend import record_variants
from dynvlm.kernels.gpu_check import plan_differences
from dynvlm.kernels.ties import resolve_ties, row_hash
from dynvlm.kernels.tome import (
    PLAN_MAX_N,
    inv_norm,
    match_reference,
    match_triton,
    merge_reference,
    merge_triton,
    plan_round,
    plan_triton,
    tome_merge,
    tome_naive,
)


def _x(frames, n, c, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(frames, n, c, generator=g) + 0.2).to(dtype)


@pytest.mark.parametrize("frames,n,c,blocks", [(2, 63, 96, None), (1, 50, 300, None), (2, 63, 40, (16, 16, 16))])
def test_match_matches_reference(frames, n, c, blocks):
    # blocks=(16,16,16): several A programs, a running max over B blocks and a K loop
    k = _x(frames, n, c)
    inv = inv_norm(k)
    best_t, idx_t = match_triton(k, inv, blocks)
    best_r, idx_r = match_reference(k, inv)
    torch.testing.assert_close(best_t, best_r, rtol=1e-5, atol=1e-6)
    assert torch.equal(idx_t, idx_r)
    assert best_t.shape == (frames, (n + 1) // 2)


def test_ties_between_identical_tokens_are_exact():
    # every B token identical, and A tokens 0..9 copies of one another: the GEMM alone gives the
    # equal columns unequal last bits (seen in the interpreter); after resolve_ties every A
    # matches B 0 and identical A tokens carry identical scores, on every backend and blocking
    k = _x(1, 70, 24)
    k[:, 1::2] = k[:, 1:2]
    k[:, 0:20:2] = k[:, 0:1]
    inv = inv_norm(k)
    for use_triton, blocks in ((False, None), (True, None), (True, (16, 16, 16))):
        match = match_triton(k, inv, blocks) if use_triton else match_reference(k, inv)
        best, idx = resolve_ties(*match, row_hash(k, use_triton))
        assert torch.equal(idx, torch.zeros_like(idx))
        assert torch.equal(best[:, :10], best[:, :1].expand(1, 10))


def test_copies_match_their_copy_with_score_one():
    k = _x(1, 20, 12)
    k[:, 6] = k[:, 13]  # A token 3 is a copy of B token 6
    k[:, 8] = k[:, 13]  # ... and so is A token 4
    best, idx = resolve_ties(*match_reference(k, inv_norm(k)), row_hash(k, False))
    assert idx[0, 3] == 6 and idx[0, 4] == 6
    assert best[0, 3] == 1.0 and best[0, 4] == 1.0 and bool((best[0, :3] < 1).all())


def test_row_hash_backends_agree_and_separate_rows():
    k = _x(2, 33, 300)
    k[:, 5] = k[:, 7]
    ht, hr = row_hash(k, True), row_hash(k, False)
    assert torch.equal(ht, hr)
    assert ht[0, 5] == ht[0, 7] and len(set(ht[0].tolist())) == 32
    for dtype in (torch.bfloat16, torch.float64):
        assert torch.equal(row_hash(k.to(dtype), True), row_hash(k.to(dtype), False))


def test_merge_matches_reference():
    x = _x(2, 41, 72)
    size = torch.rand(2, 41, generator=torch.Generator().manual_seed(3)) + 0.5
    psum = torch.arange(41.0).expand(2, 41) * size
    best, idx = match_reference(x, inv_norm(x))
    plan = plan_round(best, idx, size, psum, r=17)
    out_t = merge_triton(x, size, plan)
    torch.testing.assert_close(out_t, merge_reference(x, size, plan), rtol=1e-5, atol=1e-6)
    assert out_t.shape == (2, 24, 72)
    # sizes are conserved and survivors sit in centroid order
    torch.testing.assert_close(plan.size.sum(1), size.sum(1))
    centroid = plan.psum / plan.size
    assert bool((centroid[:, 1:] >= centroid[:, :-1]).all())


# ---------------------------------------------------------------------------------------------
# the plan kernel: bitwise plan_round, ties and odd values included


def _plan_inputs(frames, n, mode, seed=0):
    """``(best, best_idx, size, psum)`` of one round on ``n`` tokens. ``mode``: ``random`` tokens;
    ``copies`` (a third of the tokens one token: exact score ties, equal centroids);
    ``constant`` (every token equal: every A ties on score 1 with B token 1, one destination for
    all); ``floats`` (non-integer sizes and sums: the sums must add in torch's order);
    ``specials`` (scores drawn from NaN of both signs, +-inf, +-0.0 and a few values)."""
    g = torch.Generator().manual_seed(seed)
    x = _x(frames, n, 12, seed=seed)
    if mode == "copies":
        x[:, 1 : n : 3] = x[:, 1:2]
    if mode == "constant":
        x[:] = x[:, :1]
    best, idx = resolve_ties(*match_reference(x, inv_norm(x)), row_hash(x, False))
    size = torch.randint(1, 5, (frames, n), generator=g).float()
    # integer position sums with runs of equal centroids
    psum = size * (torch.randint(0, max(1, n // 4), (frames, n), generator=g).sort(1).values)
    if mode == "floats":
        size = torch.rand(frames, n, generator=g) * 7 + 0.5
        psum = torch.arange(n) * size + torch.rand(frames, n, generator=g)
    if mode == "specials":
        values = torch.tensor([float("nan"), -float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 0.5, 1.0, -1.0])
        best = values[torch.randint(0, len(values), best.shape, generator=g)]
        idx = torch.randint(0, n // 2, idx.shape, generator=g)
    return best, idx, size, psum


PLAN_CASES = [  # (frames, n, r, mode)
    (3, 41, 20, "random"),  # odd n, r = n // 2
    (2, 64, 32, "copies"),  # every A merges
    (2, 64, 1, "copies"),
    (1, 2, 1, "random"),
    (2, 7, 3, "constant"),
    (2, 101, 50, "constant"),  # 50 sources into one destination
    (3, 97, 30, "floats"),
    (4, 66, 20, "specials"),
    (2, 577, 288, "copies"),  # 1024 lanes, the first round of a 576/729-token frame
    (1, 1024, 1, "random"),
    (2, 729, 364, "floats"),
]


@pytest.mark.parametrize("frames,n,r,mode", PLAN_CASES, ids=[f"{f}x{n}-r{r}-{m}" for f, n, r, m in PLAN_CASES])
def test_plan_kernel_is_plan_round_bitwise(frames, n, r, mode):
    best, idx, size, psum = _plan_inputs(frames, n, mode)
    got, want = plan_triton(best, idx, size, psum, r), plan_round(best, idx, size, psum, r)
    assert plan_differences(got, want) == []
    if mode == "constant":  # the case is what it says: one destination takes every source
        assert got.count.max() == r


def test_plan_kernel_reads_strided_inputs():
    # tome_merge's first psum is an expanded arange (frame stride 0); matches may be views
    best, idx, size, _ = _plan_inputs(3, 40, "copies")
    psum = torch.arange(40.0).expand(3, 40)
    wide = torch.zeros(3, 40, 2)
    wide[..., 0] = size
    want = plan_round(best, idx, size, psum, 15)
    assert plan_differences(plan_triton(best, idx, wide[..., 0], psum, 15), want) == []


def test_plan_kernel_refuses_what_it_cannot_plan():
    best, idx, size, psum = _plan_inputs(1, 40, "random")
    with pytest.raises(ValueError, match="1 <= r <= n // 2"):
        plan_triton(best, idx, size, psum, 21)
    with pytest.raises(ValueError, match="float32"):
        plan_triton(best, idx, size.double(), psum.double(), 5)
    big = torch.ones(1, PLAN_MAX_N + 1)
    with pytest.raises(ValueError, match=f"n <= {PLAN_MAX_N}"):
        plan_triton(big[:, ::2], big[:, ::2].long(), big, big, 5)


def test_tome_triton_plans_with_the_kernel_up_to_its_limit():
    # 1100 tokens: the first round plans in torch (over PLAN_MAX_N), the second with the kernel
    x = _x(1, 1100, 8)
    x[:, :300] = x[:, :1]
    with record_variants() as launched:
        a = tome_merge(x, 300, backend="triton")
    b = tome_merge(x, 300, backend="torch")
    assert {dict(v.constexprs)["BLOCK"] for v in launched if v.kernel == "tome._plan_kernel"} == {1024}
    assert torch.equal(a.positions, b.positions) and torch.equal(a.size, b.size)
    torch.testing.assert_close(a.x, b.x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("frames,n,c,tokens", [(2, 63, 96, 10), (1, 50, 33, 49), (2, 36, 64, 1), (1, 35, 300, 17)])
def test_tome_fp32_matches_reference(frames, n, c, tokens, monkeypatch):
    # every Triton round plans with the kernel (counted), and the result is the torch path's
    calls = []
    monkeypatch.setattr(tome, "plan_triton", lambda *a: calls.append(a[2].shape) or plan_triton(*a))
    x = _x(frames, n, c)
    a = tome_merge(x, tokens, backend="triton")
    assert len(calls) == _rounds(n, tokens)
    b = tome_merge(x, tokens, backend="torch")
    assert a.x.shape == (frames, tokens, c) and a.x.dtype == torch.float32
    torch.testing.assert_close(a.x, b.x, rtol=1e-5, atol=1e-6)
    assert torch.equal(a.positions, b.positions)
    torch.testing.assert_close(a.size.sum(1), torch.full((frames,), float(n)))
    assert bool((a.positions[:, 1:] >= a.positions[:, :-1]).all())


def _rounds(n, tokens):
    rounds = 0
    while n > tokens:
        n -= min(n - tokens, n // 2)
        rounds += 1
    return rounds


def test_tome_bf16_matches_fp32_reference():
    x = _x(2, 45, 80, torch.bfloat16)
    a = tome_merge(x, 12, backend="triton")
    assert a.x.dtype == torch.bfloat16
    b = tome_merge(x.float(), 12, backend="torch")
    torch.testing.assert_close(a.x.float(), b.x, rtol=1e-2, atol=1e-2)
    assert torch.equal(a.positions, b.positions)


def test_identical_tokens_follow_the_pinned_tie_rule():
    # all 8 tokens equal: every A (0,2,4,6) ties on every B and the A scores tie too. Pinned
    # rule: best B = lowest (token 1); merge order = lowest A first, so A tokens 0 and 2 merge
    # into token 1 -> sizes [3,1,1,1,1,1], centroids [1,3,4,5,6,7]
    x = _x(1, 1, 16).expand(1, 8, 16).contiguous()
    for backend in ("torch", "triton"):
        res = tome_merge(x, 6, backend=backend)
        assert res.positions.tolist() == [[1.0, 3.0, 4.0, 5.0, 6.0, 7.0]], backend
        assert res.size.tolist() == [[3.0, 1.0, 1.0, 1.0, 1.0, 1.0]], backend
        torch.testing.assert_close(res.x, x[:, :6], rtol=1e-6, atol=1e-6)


def test_static_regions_give_the_same_result_on_both_backends():
    # a video frame whose left half is static background (identical tokens): many exact ties
    x = _x(2, 48, 40)
    x[:, :24] = x[:, :1]
    a = tome_merge(x, 9, backend="triton")
    b = tome_merge(x, 9, backend="torch")
    assert torch.equal(a.positions, b.positions)
    assert torch.equal(a.size, b.size)
    torch.testing.assert_close(a.x, b.x, rtol=1e-5, atol=1e-6)


def test_one_round_equals_published_tome():
    # a single round (r <= N/2) must merge the same pairs as ToMe's own formulation
    x = _x(2, 40, 32)
    ours = tome_merge(x, 25, backend="torch").x
    theirs = tome_naive(x, 25)
    key = lambda t: torch.sort(t[..., 0], dim=1).values  # noqa: E731 - ToMe reorders tokens
    torch.testing.assert_close(key(ours), key(theirs), rtol=1e-5, atol=1e-6)


def test_gradcheck_torch_path():
    x = torch.randn(1, 9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: tome_merge(t, 3, backend="torch").x, (x,))


def test_triton_gradient_matches_torch():
    x = _x(2, 37, 48).requires_grad_()
    g = torch.randn(2, 8, 48, generator=torch.Generator().manual_seed(2))
    (gt,) = torch.autograd.grad(tome_merge(x, 8, backend="triton").x, x, g)
    (gr,) = torch.autograd.grad(tome_merge(x, 8, backend="torch").x, x, g)
    torch.testing.assert_close(gt, gr, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_learned_keys_get_gradients_without_changing_values(backend):
    x = _x(1, 30, 16)
    proj = torch.nn.Linear(16, 8, bias=False)
    plain = tome_merge(x, 7, key_fn=proj, backend=backend, key_grad=False).x
    res = tome_merge(x, 7, key_fn=proj, backend=backend, key_grad=True)
    torch.testing.assert_close(res.x, plain, rtol=0, atol=0)
    res.x.square().sum().backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_bad_tokens_raise():
    x = _x(1, 10, 4)
    for bad in (0, 11, 2.0, True):
        with pytest.raises(ValueError, match=r"tokens must be an int in \[1, N=10\]"):
            tome_merge(x, bad)
    assert tome_merge(x, 10).x.shape == (1, 10, 4)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_static_background_merges_into_the_first_copy(backend):
    # every B token is the same background token: each A's best B is a 35-way exact tie that
    # must go to the first copy (token 1), whatever the GEMM's last bits say
    x = _x(1, 70, 24)
    x[:, 1::2] = x[:, 1:2]
    r = 10
    cos = torch.nn.functional.cosine_similarity(x[0, 0::2].double(), x[0, 1:2].double(), dim=-1)
    merged = (2 * torch.sort(cos, descending=True, stable=True).indices[:r]).tolist()
    rest = [float(i) for i in range(70) if i not in merged and i != 1]
    expected = sorted(rest + [(1.0 + sum(merged)) / (1 + r)])
    res = tome_merge(x, 70 - r, backend=backend)
    torch.testing.assert_close(res.positions[0], torch.tensor(expected), rtol=0, atol=1e-5)
    assert res.size.max() == 1 + r


# ---------------------------------------------------------------------------------------------
# the tie rule against an independent oracle: ToMe written out token by token, identity by
# value (exact), positions as exact fractions


def _oracle_score(u: torch.Tensor, v: torch.Tensor) -> float:
    """Cosine of two fp64 rows: exactly 1 for equal rows, below 1 for any others."""
    if torch.equal(u, v):
        return 1.0
    return min(float(torch.nn.functional.cosine_similarity(u, v, dim=0)), 1.0 - 2.0**-24)


def _oracle_positions(x: torch.Tensor, tokens: int) -> list[Fraction]:
    """Brute-force ToMe on one frame ``x`` ``[N, C]`` -> centroids (exact) of the ``tokens`` outputs.

    Each token is (value row, size, position sum). Two tokens are "identical" when their values
    are equal: a merge of identical rows keeps the value, any other merge makes a new one.
    Scores: cosine in fp64, exactly 1 for identical values and below 1 otherwise; each A takes
    its best B (lowest index on ties); A tokens merge in descending score, lower index first;
    survivors are ordered by centroid, stable.
    """
    toks = [(x[i].double(), Fraction(1), Fraction(i)) for i in range(x.shape[0])]
    while len(toks) > tokens:
        n = len(toks)
        r = min(n - tokens, n // 2)
        a_idx, b_idx = list(range(0, n, 2)), list(range(1, n, 2))

        best = []
        for i in a_idx:
            s = [_oracle_score(toks[i][0], toks[j][0]) for j in b_idx]
            best.append((max(s), b_idx[s.index(max(s))]))  # index(): the lowest B on ties
        order = sorted(range(len(a_idx)), key=lambda k: -best[k][0])  # sorted() is stable
        merged = {a_idx[k]: best[k][1] for k in order[:r]}
        groups = {i: [i] for i in range(n) if i not in merged}
        for src, dst in merged.items():
            groups[dst].append(src)
        out = []
        for keep, members in groups.items():
            vals = [toks[i][0] for i in members]
            same = all(torch.equal(v, vals[0]) for v in vals)
            size = sum(toks[i][1] for i in members)
            value = vals[0] if same else sum(toks[i][0] * float(toks[i][1]) for i in members) / float(size)
            out.append((keep, (value, size, sum(toks[i][2] for i in members))))
        out.sort(key=lambda t: (t[1][2] / t[1][1], t[0]))
        toks = [t for _, t in out]
    return [psum / size for _, size, psum in toks]


def _copies(n: int, copies: list[int], c: int = 24, seed: int = 7) -> torch.Tensor:
    """``[1, n, c]`` random distinct tokens, with the positions in ``copies`` all one token."""
    x = _x(1, n, c, seed=seed)
    x[0, copies] = x[0, copies[0]].clone()
    return x


# copy sets where deciding ties from merge history (the rule before) gave other centroids
TIE_CASES = [
    ("8 copies -> 3", lambda: _copies(8, list(range(8))), 3),
    ("16 tokens, 9 copies -> 3", lambda: _copies(16, [1, 2, 3, 4, 5, 8, 9, 10, 15]), 3),
    ("16 tokens, 9 other copies -> 3", lambda: _copies(16, [3, 4, 6, 8, 9, 10, 12, 13, 15]), 3),
    (
        "36 tokens, 20 copies -> 5",
        lambda: _copies(36, [0, 1, 2, 4, 5, 8, 10, 11, 13, 18, 19, 20, 22, 24, 25, 26, 27, 29, 34, 35]),
        5,
    ),
]


def test_oracle_gives_the_documented_centroids():
    # the oracle itself: 8 copies -> 3 by hand. Round 1 (r=4): A 0,2,4,6 all tie on B 1 -> size
    # 5 at 13/5; round 2 (r=1): the merged token (A, slot 0) ties exactly with the copy at 5
    # (A, slot 2) and goes first (lower index) into B slot 1 (token 3): (13+3)/6 = 8/3
    assert _oracle_positions(_copies(8, list(range(8)))[0], 3) == [Fraction(8, 3), Fraction(5), Fraction(7)]


@pytest.mark.parametrize("name,make,tokens", TIE_CASES, ids=[c[0] for c in TIE_CASES])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_ties_follow_bits_whatever_the_merge_history(name, make, tokens, backend):
    # a merged copy of a token is bitwise that token and must tie with its unmerged copies
    x = make()
    want = [float(p) for p in _oracle_positions(x[0], tokens)]
    res = tome_merge(x, tokens, backend=backend)
    torch.testing.assert_close(res.positions[0], torch.tensor(want), rtol=0, atol=1e-5)
    for dtype in (torch.bfloat16, torch.float16):  # bits compared in the input's dtype, then fp32
        low = tome_merge(x.to(dtype), tokens, backend=backend)
        want_low = [float(p) for p in _oracle_positions(x[0].to(dtype), tokens)]
        torch.testing.assert_close(low.positions[0], torch.tensor(want_low), rtol=0, atol=1e-5)


def test_merging_copies_gives_the_token_back_bitwise():
    # the merge's form own - sum w (own - x)/W: exact for copies, whatever the weights
    x = _x(1, 1, 33).expand(1, 12, 33).contiguous()
    x[0, :, 0] = -0.0  # even a negative zero survives (own + 0.0 would turn it positive)
    size = torch.rand(1, 12, generator=torch.Generator().manual_seed(1)) * 7 + 0.5
    best, idx = resolve_ties(*match_reference(x, inv_norm(x)), row_hash(x, False))
    plan = plan_round(best, idx, size, torch.arange(12.0)[None] * size, r=6)
    for out in (merge_reference(x, size, plan), merge_triton(x, size, plan)):
        assert torch.equal(out, x[:, :6]) and str(out[0, :, 0].tolist()).count("-0.0") == 6
