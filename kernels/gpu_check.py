"""Correctness of the compiled Triton kernels on a CUDA device: ``python -m dynvlm.kernels.gpu_check``.

CI runs the kernels only under ``TRITON_INTERPRET=1``; this is the prepared device check for a
session lent a GPU (run it with ``TRITON_INTERPRET`` unset). For each op, at realistic sizes
and in fp32/bf16/fp16, it compares the Triton path with the torch path on the same CUDA input
(forward and input gradient), plus the exact-tie cases, and prints one line per check. Exit
status: 0 all passed, 1 a check failed, 2 no CUDA device.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from ._backend import interpreting
from .pool import adaptive_pool
from .prune import gumbel_noise, gumbel_topk
from .tome import tome_merge

SIZES = ((2, 576, 1024, 100), (3, 576, 1000, 36), (2, 64, 72, 7))
TIE_SIZE = (2, 576, 1024)
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


def run(dev: torch.device) -> bool:
    """Run every check on ``dev``; True when all pass."""
    ok = True
    for size in SIZES:
        for dtype in TOL:
            gen = torch.Generator().manual_seed(0)
            base = (torch.randn(size[:3], generator=gen) + 0.2).to(dev, dtype)
            for op, fn in _ops(size, dev).items():
                xs = [base.clone().requires_grad_() for _ in range(2)]
                outs = [fn(xs[0], "triton"), fn(xs[1], "torch")]
                g = torch.randn_like(outs[1])
                grads = [torch.autograd.grad(o, x, g)[0] for o, x in zip(outs, xs)]
                tag = f"{op} {str(dtype).removeprefix('torch.')} {'x'.join(map(str, size))}"
                ok &= _check(f"{tag} forward", outs[0], outs[1], dtype)
                ok &= _check(f"{tag} grad", grads[0], grads[1], dtype)
    # identical tokens: every B token equal, so each A must merge into the first copy on both paths
    x = torch.randn(TIE_SIZE, generator=torch.Generator().manual_seed(3)).to(dev)
    x[:, 1::2] = x[:, 1:2]
    keep = TIE_SIZE[1] // 2 + 12
    a, b = tome_merge(x, keep, backend="triton"), tome_merge(x, keep, backend="torch")
    same = torch.equal(a.positions, b.positions) and torch.equal(a.size, b.size)
    print(f"{'PASS' if same else 'FAIL'} tome exact ties on a static background", flush=True)
    return ok and same


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
