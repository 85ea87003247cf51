"""``dynvlm bench kernels``: time every compressor op on each backend and print a markdown table.

For each op (pool, tome, prune, plan) at each ``(frames, N, C, tokens)`` size and dtype it times:

- ``naive``: the straightforward eager version model code usually writes (``pool_naive``,
  ``tome_naive``, ``prune_naive``);
- ``torch``: this package's torch path (``backend="torch"``);
- ``compile``: ``torch.compile`` of the naive version, measured in the same run;
- ``triton``: the Triton path (CUDA only; ``n/a (no GPU)`` elsewhere).

Times are the median and 20/80 % quantiles in ms (``triton.testing.do_bench`` on CUDA, which
flushes L2; wall clock on CPU). ``A ×B`` columns are B's median over A's (above 1: A is
faster). ``GB/s`` is the op's floor traffic (see :func:`floor_bytes`) over the median of the
fastest path available (Triton on CUDA, torch elsewhere), against the copy bandwidth measured
in the same run.

``prune`` is timed as its kernel's job: select the top ``tokens`` of given scores + Gumbel
noise and gather the rows (the scorer MLP is a plain GEMM left to cuBLAS/MKL).

``plan`` is the bookkeeping of ToMe's first round (``N`` tokens, ``r = min(N - tokens, N // 2)``
merges) from given match results: eager torch (:func:`~dynvlm.kernels.tome.plan_round`, both the
``naive`` and the ``torch`` column: it has no other eager form) against the one-launch Triton
kernel (:func:`~dynvlm.kernels.tome.plan_triton`). The tokens (``C`` channels, the row's dtype)
are matched once, outside the timing; the plan's inputs are fp32 scores and sizes either way.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._backend import HAS_TRITON, triton
from .pool import adaptive_pool, pool_naive
from .prune import gumbel_noise, gumbel_topk, prune_naive
from .ties import resolve_ties, row_hash
from .tome import PLAN_MAX_N, inv_norm, match_reference, plan_round, plan_triton, tome_merge, tome_naive

__all__ = ["SIZES", "Timing", "floor_bytes", "main", "plan_merges", "run"]

SIZES = ((8, 576, 1024, 100), (128, 576, 1024, 100), (128, 576, 1024, 16))
OPS = ("pool", "tome", "prune", "plan")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Timing:
    """Median and 20/80 % quantiles in ms over ``n`` runs."""

    median: float
    p20: float
    p80: float
    n: int

    def __str__(self) -> str:
        if self.n == 1:
            return f"{self.median:.2f} (1 run)"
        return f"{self.median:.2f} [{self.p20:.2f}–{self.p80:.2f}]"  # n == 0: do_bench's own repeats


def _time_cpu(fn: Callable[[], object], budget_s: float) -> Timing:
    start = time.perf_counter()
    fn()  # warm-up (allocator, lazy init); a slow op's warm-up is its only run
    first = time.perf_counter() - start
    if first >= 2.0:  # too slow to repeat within the CLI's time budget: the warm-up is the sample
        runs, samples = 0, [first]
    else:
        runs, samples = max(1, min(20, int(budget_s / max(first, 1e-6)))), []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    ms = sorted(s * 1e3 for s in samples)
    q = statistics.quantiles(ms, n=5, method="inclusive") if len(ms) >= 2 else [ms[0]] * 4
    return Timing(statistics.median(ms), q[0], q[3], len(ms))


def _time(fn: Callable[[], object], device: torch.device, budget_s: float) -> Timing:
    if device.type == "cuda" and HAS_TRITON:  # do_bench flushes L2 between runs
        med, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
        return Timing(med, p20, p80, 0)
    if device.type == "cuda":  # no Triton: CUDA events around each call
        torch.cuda.synchronize()
        fn()  # warm-up
        times = []
        for _ in range(20):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        q = statistics.quantiles(sorted(times), n=5, method="inclusive")
        return Timing(statistics.median(times), q[0], q[3], len(times))
    return _time_cpu(fn, budget_s)


def copy_bandwidth(device: torch.device) -> float:
    """Measured device copy bandwidth in GB/s (read + write of a 64 MiB buffer, beyond any cache)."""
    src = torch.empty(16 * 2**20, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch of dst's pages is not part of the bandwidth
    t = _time(lambda: dst.copy_(src), device, budget_s=1.0)
    return 2 * src.numel() * 4 / (t.median * 1e-3) / 1e9


def floor_bytes(op: str, frames: int, n: int, c: int, tokens: int, itemsize: int) -> int:
    """Minimal memory traffic of one call: pool reads X and writes the output; ToMe reads X twice
    (match, merge) and writes the output; prune's select+gather reads scores and noise (fp32) and
    the kept rows, and writes them; plan reads the match results, sizes and sums and writes its
    :class:`~dynvlm.kernels.tome.RoundPlan`."""
    x = frames * n * c * itemsize
    s = math.isqrt(tokens)
    if op == "pool":
        return x + frames * s * s * c * itemsize
    if op == "tome":
        return 2 * x + frames * tokens * c * itemsize
    if op == "plan":  # fp32 score + int64 match per A, fp32 size + sum per token in; the RoundPlan out
        r = plan_merges(n, tokens)
        m = n - r
        return frames * (12 * ((n + 1) // 2) + 8 * n + (3 * 8 + 2 * 4) * m + 8 * n + 3 * 8 * r)
    return 2 * frames * n * 4 + 2 * frames * tokens * c * itemsize


def plan_merges(n: int, tokens: int) -> int:
    """Merges ``r`` of ToMe's first round on ``n`` tokens towards ``tokens`` (at least 1: a plan
    of no merges is no plan)."""
    return max(1, min(n - tokens, n // 2))


def _fns(op: str, x: torch.Tensor, tokens: int, gen: torch.Generator) -> dict[str, Callable[[torch.Tensor], object]]:
    frames, n, _ = x.shape
    side = math.isqrt(n)
    grid = (side, n // side)
    s = math.isqrt(tokens)
    if op == "pool":
        return {
            "naive": lambda t: pool_naive(t, grid, (s, s)),
            "torch": lambda t: adaptive_pool(t, (s, s), grid, backend="torch"),
            "triton": lambda t: adaptive_pool(t, (s, s), grid, backend="triton"),
        }
    if op == "tome":
        return {
            "naive": lambda t: tome_naive(t, tokens),
            "torch": lambda t: tome_merge(t, tokens, backend="torch").x,
            "triton": lambda t: tome_merge(t, tokens, backend="triton").x,
        }
    if op == "plan":
        # the first round's inputs, computed once: the callables ignore their argument
        keys = x.float()
        best, idx = resolve_ties(*match_reference(keys, inv_norm(keys)), row_hash(x, False))
        size = torch.ones((frames, n), device=x.device)
        psum = torch.arange(n, device=x.device, dtype=torch.float32).expand(frames, n)
        args = (best, idx, size, psum, plan_merges(n, tokens))
        # beyond PLAN_MAX_N tokens tome_merge plans in torch, and so does this row
        plan_tri = plan_triton if n <= PLAN_MAX_N else plan_round
        return {
            "naive": lambda t: plan_round(*args).kept,
            "torch": lambda t: plan_round(*args).kept,
            "triton": lambda t: plan_tri(*args).kept,
        }
    scores = torch.randn(frames, n, generator=gen).to(x.device)
    noise = gumbel_noise((frames, n), generator=gen).to(x.device)
    return {
        "naive": lambda t: prune_naive(t, scores, tokens, noise),
        "torch": lambda t: gumbel_topk(t, scores, tokens, noise, backend="torch")[0],
        "triton": lambda t: gumbel_topk(t, scores, tokens, noise, backend="triton")[0],
    }


def run(
    ops: tuple[str, ...] = OPS,
    sizes: tuple[tuple[int, int, int, int], ...] = SIZES,
    dtypes: tuple[str, ...] = ("fp32", "bf16"),
    device: str | None = None,
    compile_budget_s: float | None = None,
    cell_budget_s: float | None = None,
    time_budget_s: float | None = None,
    out=None,
) -> list[dict[str, object]]:
    """Measure, then print the table; return its rows as dicts (:class:`Timing` cells or a reason string).

    Args:
        ops, sizes, dtypes: what to measure (sizes are ``(frames, N, C, tokens)``, N a square).
        device: ``cuda`` or ``cpu`` (default: CUDA when available).
        compile_budget_s: seconds allowed for ``torch.compile`` compilations (default unlimited on
            CUDA, 40 s on CPU, where inductor takes tens of seconds per shape).
        cell_budget_s: wall-clock seconds per timed cell on CPU (default 0.5).
        time_budget_s: total seconds (default unlimited on CUDA, 85 s on CPU). Eager paths are
            timed first (fp32 first, smallest size first), then ``torch.compile`` cells while the
            budgets last; a row whose cost, estimated from the same op and dtype at a smaller
            size, would overrun the budget is printed as skipped.
    """
    out = out if out is not None else sys.stdout  # looked up per call, so redirections apply
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = dev.type == "cuda"
    use_triton = on_gpu and HAS_TRITON
    compile_left = compile_budget_s if compile_budget_s is not None else (math.inf if on_gpu else 40.0)
    cell = cell_budget_s if cell_budget_s is not None else 0.5
    started = time.perf_counter()
    deadline = started + (time_budget_s if time_budget_s is not None else (math.inf if on_gpu else 85.0))
    paths = ("naive", "torch", "triton") if use_triton else ("naive", "torch")
    bw = copy_bandwidth(dev)
    rows: list[dict[str, object]] = []
    per_frame: dict[tuple[str, str], dict[str, float]] = {}  # seconds per frame and call, last measured size
    for dname in dtypes:
        for frames, n, c, tokens in sorted(sizes):
            for op in ops:
                row: dict[str, object] = {"op": op, "dtype": dname, "frames": frames, "N": n, "C": c, "tokens": tokens}
                rows.append(row)
                est = sum(_cell_cost(spf * frames, cell) for spf in per_frame.get((op, dname), {}).values())
                if time.perf_counter() + est > deadline:
                    row["skipped"] = f"skipped (time budget: ~{est:.0f} s)"
                    continue
                x, fns = _inputs(op, dname, (frames, n, c, tokens), dev)
                for path in paths:
                    row[path] = _time(lambda f=fns[path], t=x: f(t), dev, cell)
                row.setdefault("triton", "n/a (no GPU)")
                per_frame[(op, dname)] = {p: row[p].median * 1e-3 / frames for p in paths}
                row["bytes"] = floor_bytes(op, frames, n, c, tokens, x.element_size())
    for row in rows:
        if "skipped" in row:
            continue
        key = (row["op"], row["dtype"])
        est = 2 * _cell_cost(per_frame[key]["naive"] * row["frames"], cell)
        if compile_left <= 0 or time.perf_counter() + est > deadline:
            row["compile"] = "skipped (compile budget)" if compile_left <= 0 else "skipped (time budget)"
            continue
        x, fns = _inputs(row["op"], row["dtype"], (row["frames"], row["N"], row["C"], row["tokens"]), dev)
        # a fresh compile per row: the naive callable closes over this row's tokens and scores
        fn = torch.compile(fns["naive"], dynamic=False)
        t0 = time.perf_counter()
        y = fn(x)  # compilation, outside the timing
        compile_left -= time.perf_counter() - t0
        frames, tokens = row["frames"], row["tokens"]
        want = (frames, math.isqrt(tokens) ** 2 if row["op"] == "pool" else tokens, row["C"])
        if row["op"] == "plan":  # the kept indices of the round's plan
            want = (frames, row["N"] - plan_merges(row["N"], tokens))
        if tuple(y.shape) != want:
            raise RuntimeError(f"bench: compiled {row['op']} returned shape {tuple(y.shape)}, expected {want}")
        row["compile"] = _time(lambda f=fn, t=x: f(t), dev, cell)
    _header(out, dev, bw)
    best_name = "triton" if use_triton else "torch"
    for row in rows:
        if "skipped" not in row:
            row["GB/s"] = row.pop("bytes") / (row[best_name].median * 1e-3) / 1e9
            row["copy GB/s"] = bw
        _print_row(out, row, best_name)
    print(f"\ntotal {time.perf_counter() - started:.0f} s", file=out)
    return rows


def _cell_cost(call_s: float, cell: float) -> float:
    # _time_cpu: a warm-up call, then repeats filling the cell budget (at least one; none when slow)
    return call_s if call_s >= 2.0 else call_s + max(cell, call_s)


def _inputs(op: str, dname: str, size: tuple[int, int, int, int], dev: torch.device):
    """A random ``[F, N, C]`` input of ``size`` and the op's callables on it (fixed seed per row)."""
    frames, n, c, tokens = size
    gen = torch.Generator().manual_seed(zlib.crc32(repr((op, dname, size)).encode()))
    x = torch.randn(frames, n, c, generator=gen).to(device=dev, dtype=DTYPES[dname])
    return x, _fns(op, x, tokens, gen)


def _header(out, dev: torch.device, bw: float) -> None:
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = f"{_cpu_model()} ({torch.get_num_threads()} threads)"
    tv = triton.__version__ if HAS_TRITON else "absent"
    print(f"device: {name}; torch {torch.__version__}; triton {tv}; copy bandwidth {bw:.1f} GB/s", file=out)
    print("times: median [p20–p80] ms; A ×B = B's median / A's median (> 1: A is faster)", file=out)
    print("", file=out)
    print(
        "| op | dtype | F×N×C → tokens | naive | torch | compile(naive) | triton "
        "| torch ×naive | torch ×compile | triton ×torch | triton ×compile | GB/s (% copy) |",
        file=out,
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|", file=out)


def _ratio(path: Timing | str, base: Timing | str) -> str:
    if isinstance(path, Timing) and isinstance(base, Timing):
        return f"{base.median / path.median:.2f}×"
    return "n/a"


def _print_row(out, row: dict, best_name: str) -> None:
    shape = f"{row['frames']}×{row['N']}×{row['C']} → {row['tokens']}"
    if "skipped" in row:
        print("| " + " | ".join([row["op"], row["dtype"], shape, row["skipped"]] + ["–"] * 7) + " |", file=out)
        return
    cells = [
        row["op"], row["dtype"], shape, row["naive"], row["torch"], row["compile"], row["triton"],
        _ratio(row["torch"], row["naive"]), _ratio(row["torch"], row["compile"]),
        _ratio(row["triton"], row["torch"]), _ratio(row["triton"], row["compile"]),
        f"{row['GB/s']:.1f} ({best_name}, {100 * row['GB/s'] / row['copy GB/s']:.0f} %)",
    ]  # fmt: skip
    print("| " + " | ".join(str(c) for c in cells) + " |", file=out, flush=True)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _size(text: str) -> tuple[int, int, int, int]:
    parts = text.lower().replace("x", ",").split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"size must be frames,N,C,tokens (e.g. 8,576,1024,100), got {text!r}")
    f, n, c, t = (int(p) for p in parts)
    if math.isqrt(n) ** 2 != n or not 1 <= t <= n:
        raise argparse.ArgumentTypeError(f"size {text!r}: N must be a perfect square and tokens in [1, N]")
    return f, n, c, t


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dynvlm bench kernels [options]``; returns the exit status."""
    p = argparse.ArgumentParser(prog="dynvlm bench kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), help="ops to time (default: all)")
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    p.add_argument("--size", dest="sizes", action="append", type=_size, metavar="F,N,C,TOKENS",
                   help="a size to time (repeatable; default: the three sizes of issue 3)")  # fmt: skip
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--compile-budget", type=float, default=None, metavar="S",
                   help="seconds for torch.compile compilations (default: unlimited on CUDA, 40 on CPU)")  # fmt: skip
    p.add_argument("--cell-budget", type=float, default=None, metavar="S", help="CPU seconds per timed cell (0.5)")
    p.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help="total seconds; rows estimated to overrun it are skipped (default: unlimited on CUDA, 85 on CPU)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="torch CPU threads (default: torch's); 1 is steadier on a loaded machine")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="one small size (2,64,96,16), fp32, no compile: a smoke run")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("dynvlm bench kernels: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    sizes = tuple(args.sizes) if args.sizes else SIZES
    dtypes = tuple(args.dtypes)
    compile_budget = args.compile_budget
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.quick:
        sizes, dtypes = ((2, 64, 96, 16),), ("fp32",)
        compile_budget = 0.0 if compile_budget is None else compile_budget  # inductor's cold start is ~40 s on CPU
    run(tuple(args.ops), sizes, dtypes, args.device, compile_budget, args.cell_budget, args.time_budget)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
