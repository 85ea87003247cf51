"""Microbenchmarks of the compressor ops (skipped unless run with ``--benchmark-only``):

    .venv/bin/python -m pytest tests/benchmarks/test_bench_kernels.py --benchmark-only

Paths: ``naive`` (straightforward eager), ``torch`` (this package's torch path) and, on CUDA,
``triton``. Numbers for docs/benchmarks.md come from ``dynvlm bench kernels``, which also times
``torch.compile``; these track regressions. Sizes: (8, 576, 1024, 100) on CPU; all three
sizes of issue 3 on CUDA.
"""

from __future__ import annotations

import pytest
import torch

from dynvlm.kernels.bench import SIZES, _fns, floor_bytes

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
PATHS = ["naive", "torch"] + (["triton"] if CUDA else [])  # the interpreter is not a benchmark
BENCH_SIZES = SIZES if CUDA else SIZES[:1]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.mark.parametrize("size", BENCH_SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op", ["pool", "tome", "prune"])
def test_compressor_op(benchmark, op, path, dtype, size):
    frames, n, c, tokens = size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(frames, n, c, generator=gen).to(device=DEVICE, dtype=DTYPES[dtype])
    fn = _fns(op, x, tokens, gen)[path]

    def call():
        out = fn(x)
        if CUDA:
            torch.cuda.synchronize()
        return out

    benchmark.group = f"{op} {dtype} {frames}x{n}x{c}->{tokens}"
    out = benchmark.pedantic(call, rounds=3 if not CUDA else 20, warmup_rounds=1)
    nbytes = floor_bytes(op, frames, n, c, tokens, x.element_size())
    benchmark.extra_info["floor_bytes"] = nbytes
    benchmark.extra_info["GB/s"] = nbytes / benchmark.stats.stats.median / 1e9
    assert out.shape[0] == frames and out.shape[2] == c and out.dtype == x.dtype
