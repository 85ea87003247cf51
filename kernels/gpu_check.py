"""Correctness of the compiled Triton kernels on a CUDA device: ``python -m dynvlm.kernels.gpu_check``.

CI runs the kernels only under ``TRITON_INTERPRET=1``; this is the prepared device check for a
session lent a GPU (run it with ``TRITON_INTERPRET`` unset). It compares the Triton path with
the torch path on the same CUDA input (forward and input gradient) and prints one line per check:

- each op at realistic sizes (:data:`SIZES`) in fp32/bf16/fp16;
- one call per kernel variant (:func:`coverage_cases`): every block size and dtype the
  dispatchers can launch (the set tests/test_kernels_compile.py compiles), at the small shape
  each variant's ``example`` names;
- ToMe's plan kernel against :func:`~dynvlm.kernels.tome.plan_round` at :data:`PLAN_SIZES`,
  bitwise (every index tensor, sizes and position sums), on the device and against CPU;
- the exact-tie cases.

The last line counts the variants launched against the enumeration. Exit status: 0 all passed,
1 a check failed, 2 no CUDA device.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from . import pool, prune, tome
from ._backend import interpreting, record_variants
from .aot import all_variants
from .pool import adaptive_pool
from .prune import gumbel_noise, gumbel_topk
from .ties import resolve_ties, row_hash
from .tome import RoundPlan, inv_norm, match_reference, plan_round, plan_triton, tome_merge

SIZES = ((2, 576, 1024, 100), (3, 576, 1000, 36), (2, 64, 72, 7))
TIE_SIZE = (2, 576, 1024)
# (frames, n, r) of the plan checks: first rounds of 576- and 729-token frames, a late round of
# a merge to 16 tokens, one merge in an odd frame
PLAN_SIZES = ((128, 576, 288), (128, 729, 364), (256, 36, 18), (7, 47, 1))
TOL = {torch.float32: (1e-5, 1e-6), torch.bfloat16: (1e-2, 1e-2), torch.float16: (1e-2, 1e-3)}


def _ops(size: tuple[int, int, int, int], dev: torch.device) -> dict[str, Callable[[torch.Tensor, str], torch.Tensor]]:
    frames, n, _, tokens = size
    side = int(n**0.5)
    s = max(1, int(tokens**0.5))
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(frames, n, generator=gen).to(dev)
    noise = gumbel_noise((frames, n), generator=gen).to(dev)
    return {
        "pool": lambda x, b: adaptive_pool(x, (s, s), (side, n // side), backend=b),
        "tome": lambda x, b: tome_merge(x, tokens, backend=b).x,
        "prune": lambda x, b: gumbel_topk(x, scores, tokens, noise, backend=b)[0],
    }


def _check(name: str, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> bool:
    rtol, atol = TOL[dtype]
    ok = got.shape == want.shape and torch.allclose(got.float(), want.float(), rtol=rtol, atol=atol)
    err = (got.float() - want.float()).abs().max().item() if got.shape == want.shape else float("nan")
    print(f"{'PASS' if ok else 'FAIL'} {name}: max abs diff {err:.3g} (rtol {rtol}, atol {atol})", flush=True)
    return ok


def _compare(tag: str, fn: Callable[[torch.Tensor, str], torch.Tensor], base: torch.Tensor) -> bool:
    """Triton on ``base`` against torch on ``base`` in fp32 (the kernels accumulate in fp32 and round
    once; torch's own bf16/fp16 kernels may accumulate in low precision): forward, then the
    gradient of one random cotangent (rounded to ``base.dtype`` for both)."""
    x_tri, x_ref = base.clone().requires_grad_(), base.float().requires_grad_()
    out_tri, out_ref = fn(x_tri, "triton"), fn(x_ref, "torch")
    g = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(4)).to(base.device, base.dtype)
    (grad_tri,) = torch.autograd.grad(out_tri, x_tri, g)
    (grad_ref,) = torch.autograd.grad(out_ref, x_ref, g.float())
    ok = _check(f"{tag} forward", out_tri, out_ref.to(base.dtype), base.dtype)
    return _check(f"{tag} grad", grad_tri, grad_ref.to(base.dtype), base.dtype) and ok


def coverage_cases() -> list[tuple[str, torch.dtype, tuple[int, int, int, int]]]:
    """``(op, dtype, (frames, N, C, arg))`` calls that together launch every GPU variant, one per
    distinct ``example`` of each module's ``gpu_variants()``. ``arg``: pool pools a ``2 x N/2``
    grid to ``2 x arg``; tome merges to ``arg`` tokens (one round of ``N // 2`` merges when the
    example names ``n``: the plan kernel's block for ``n`` tokens); prune keeps ``N // 3``
    (``arg`` unused). C = 70: a partial channel block on every kernel."""
    cases: dict[tuple, None] = {}
    for op, module in (("pool", pool), ("tome", tome), ("prune", prune)):
        for v in module.gpu_variants():
            e = v.example_args()
            dtype = getattr(torch, e["dtype"])
            if op == "pool":  # a 2 x w grid pooled to 2 x ow (the backward runs with the forward)
                w, ow = int(e["w"]), int(e["ow"])
                cases[(op, dtype, (1, 2 * w, 70, ow))] = None
            elif op == "prune":
                cases[(op, dtype, (2, int(e["n"]), 70, 0))] = None
            elif "n" in e:
                n = int(e["n"])
                cases[(op, dtype, (1, n, 70, n - n // 2))] = None
            else:
                cases[(op, dtype, (2, 40, 70, 9))] = None
    return list(cases)


def _coverage_fn(
    op: str, size: tuple[int, int, int, int], dev: torch.device
) -> Callable[[torch.Tensor, str], torch.Tensor]:
    frames, n, _, arg = size
    if op == "pool":
        return lambda x, b: adaptive_pool(x, (2, arg), (2, n // 2), backend=b)
    if op == "tome":
        return lambda x, b: tome_merge(x, arg, backend=b).x
    gen = torch.Generator().manual_seed(2)
    scores = torch.randn(frames, n, generator=gen).to(dev)
    noise = gumbel_noise((frames, n), generator=gen).to(dev)
    return lambda x, b: gumbel_topk(x, scores, max(1, n // 3), noise, backend=b)[0]


def plan_inputs(frames: int, n: int, dev: torch.device, seed: int = 5) -> tuple[torch.Tensor, ...]:
    """What a ToMe round hands its plan, on ``dev``: ``(best, best_idx)`` ``[frames, ceil(n/2)]`` of
    random tokens a third of which are copies of one token (exact score ties), integer sizes
    ``[frames, n]`` in 1..4 and position sums giving runs of three equal centroids."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, n, 32, generator=gen)
    x[:, : n // 3] = x[:, :1]
    x = x.to(dev)
    best, idx = resolve_ties(*match_reference(x, inv_norm(x)), row_hash(x, False))
    size = torch.randint(1, 5, (frames, n), generator=gen).float()
    psum = size * (torch.arange(n) // 3)
    return best, idx, size.to(dev), psum.to(dev)


def plan_differences(a: RoundPlan, b: RoundPlan) -> list[str]:
    """Names of the fields of two plans that differ in shape, dtype or any bit (fp32 fields are
    compared as their bits: -0.0 is not 0.0)."""

    def bits(t: torch.Tensor) -> torch.Tensor:
        return (t.view(torch.int32) if t.dtype == torch.float32 else t).cpu()

    out = []
    for k in RoundPlan.__dataclass_fields__:
        x, y = getattr(a, k), getattr(b, k)
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(bits(x), bits(y)):
            out.append(k)
    return out


def _check_plan(frames: int, n: int, r: int, dev: torch.device) -> bool:
    args = plan_inputs(frames, n, dev)
    got = plan_triton(*args, r)
    on_dev = plan_differences(got, plan_round(*args, r))
    on_cpu = plan_differences(got, plan_round(*(t.cpu() for t in args), r))
    bad = sorted(set(on_dev) | set(on_cpu))
    tail = f" (differ: {', '.join(bad)})" if bad else ""
    what = f"tome plan {frames}x{n} r={r}: equals plan_round bitwise, on the device and on CPU"
    print(f"{'FAIL' if bad else 'PASS'} {what}{tail}", flush=True)
    return not bad


def run(dev: torch.device) -> bool:
    """Run every check on ``dev``; True when all pass."""
    ok = True
    with record_variants() as launched:
        for size in SIZES:
            for dtype in TOL:
                gen = torch.Generator().manual_seed(0)
                base = (torch.randn(size[:3], generator=gen) + 0.2).to(dev, dtype)
                for op, fn in _ops(size, dev).items():
                    ok &= _compare(f"{op} {str(dtype).removeprefix('torch.')} {'x'.join(map(str, size))}", fn, base)
        for op, dtype, size in coverage_cases():
            base = (torch.randn(size[:3], generator=torch.Generator().manual_seed(1)) + 0.2).to(dev, dtype)
            tag = f"{op} {str(dtype).removeprefix('torch.')} {'x'.join(map(str, size[:3]))} ({size[3]}) variant"
            ok &= _compare(tag, _coverage_fn(op, size, dev), base)
        for frames, n, r in PLAN_SIZES:
            ok &= _check_plan(frames, n, r, dev)
    # identical tokens: every B token equal, so each A must merge into the first copy on both paths
    x = torch.randn(TIE_SIZE, generator=torch.Generator().manual_seed(3)).to(dev)
    x[:, 1::2] = x[:, 1:2]
    keep = TIE_SIZE[1] // 2 + 12
    a, b = tome_merge(x, keep, backend="triton"), tome_merge(x, keep, backend="torch")
    same = torch.equal(a.positions, b.positions) and torch.equal(a.size, b.size)
    print(f"{'PASS' if same else 'FAIL'} tome exact ties on a static background", flush=True)
    every = set(all_variants())
    covered = launched >= every
    missing = sorted(f"{v.kernel} {dict(v.constexprs)} {v.pointers}" for v in every - launched)
    print(
        f"{'PASS' if covered else 'FAIL'} launched {len(launched & every)} of {len(every)} kernel variants", flush=True
    )
    for m in missing:
        print(f"  not launched: {m}", flush=True)
    return ok and same and covered


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` is accepted for symmetry with the other tools and ignored."""
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; the kernels are tested under TRITON_INTERPRET=1 instead", file=sys.stderr)
        return 2
    if interpreting():
        print("gpu_check: TRITON_INTERPRET is set; unset it to test the compiled kernels", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)}; torch {torch.__version__}", flush=True)
    return 0 if run(dev) else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
