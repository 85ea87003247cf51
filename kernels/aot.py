"""Ahead-of-time compilation of every Triton kernel variant for given GPU architectures, no GPU needed.

``python -m dynvlm.kernels.aot [--arch 80 90] [--jobs 2]`` compiles each :class:`~._backend.Variant`
that the dispatchers can launch (:func:`all_variants`: the union of each kernel module's
``gpu_variants()``) to a cubin with Triton's bundled ptxas, and prints one row per variant and
architecture: registers per thread and spill stores/loads (bytes) from ptxas's report.

Integer arguments are compiled as plain ``i32``: on a GPU Triton also specialises integers equal
to 1 and multiples of 16 (strides), which changes vectorisation, not the block sizes.
Each worker is a fresh interpreter with ``TRITON_INTERPRET`` unset (the kernels must be real
``JITFunction``s) and its own empty Triton cache (a cached kernel would skip ptxas and its report).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from ._backend import Variant

__all__ = ["ARCHS", "Compiled", "all_variants", "compile_all", "compile_variant", "main"]

ARCHS = (80, 90)  # A100, H100


@dataclass
class Compiled:
    """One variant compiled for one architecture: ``registers`` per thread, spill bytes, compile seconds."""

    kernel: str
    arch: int
    constexprs: str
    pointers: str
    num_warps: int
    registers: int
    spill_stores: int
    spill_loads: int
    seconds: float

    @property
    def spills(self) -> bool:
        """True when ptxas spilled registers to local memory."""
        return self.spill_stores > 0 or self.spill_loads > 0


def all_variants() -> list[Variant]:
    """Every kernel variant the dispatchers (pool, tome, prune) can launch on a GPU, each once."""
    from . import pool, prune, tome

    out: dict[Variant, Variant] = {}
    for module in (pool, tome, prune):
        for v in module.gpu_variants():
            out.setdefault(v, v)
    return list(out.values())


def _describe(v: Variant) -> tuple[str, str]:
    consts = " ".join(f"{k}={int(val) if isinstance(val, bool) else val}" for k, val in v.constexprs)
    return consts, " ".join(f"{k.removesuffix('_ptr')}:{d}" for k, d in v.pointers)


def compile_variant(v: Variant, arch: int) -> Compiled:
    """Compile ``v`` to a cubin for ``sm_<arch>``; raise on any compile error.

    Needs the real ``JITFunction`` (``TRITON_INTERPRET`` unset before the kernels were imported)
    and ``TRITON_DUMP_PTXAS_LOG=1`` with an empty cache, for ptxas's register report.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, name = v.kernel.rsplit(".", 1)
    fn = getattr(importlib.import_module(f"{__package__}.{module}"), name)
    if not hasattr(fn, "arg_names") or type(fn).__name__ != "JITFunction":
        raise RuntimeError(f"{v.kernel} is a {type(fn).__name__}, not a JITFunction: unset TRITON_INTERPRET")
    src = ASTSource(fn, signature=v.signature(fn.arg_names), constexprs=dict(v.constexprs))
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):  # Triton prints ptxas's -v report when asked to
        triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": v.num_warps})
    seconds = time.perf_counter() - start
    text = log.getvalue()
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if regs is None or spills is None:
        raise RuntimeError(f"{v.kernel}: no ptxas report (TRITON_DUMP_PTXAS_LOG=1 and an empty cache?):\n{text}")
    consts, ptrs = _describe(v)
    return Compiled(
        v.kernel,
        arch,
        consts,
        ptrs,
        v.num_warps,
        int(regs.group(1)),
        int(spills.group(1)),
        int(spills.group(2)),
        seconds,
    )


def _worker_env(cache_dir: str) -> dict[str, str]:
    env = {k: val for k, val in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=cache_dir, TRITON_DUMP_PTXAS_LOG="1", TRITON_DEFAULT_FP_FUSION="1")
    return env


def compile_all(archs: tuple[int, ...] = ARCHS, jobs: int = 2) -> list[Compiled]:
    """Compile :func:`all_variants` for every arch in ``jobs`` worker processes (round-robin shards).

    Returns one :class:`Compiled` per (variant, arch), in enumeration order; raises
    ``RuntimeError`` with the worker's output when any compile fails.
    """
    with tempfile.TemporaryDirectory(prefix="dynvlm-aot-") as cache:
        cmd = [sys.executable, "-m", f"{__package__}.aot", "--json", "--arch", *map(str, archs), "--shard"]
        procs = [
            subprocess.Popen(
                [*cmd, f"{i}/{jobs}"],
                env=_worker_env(os.path.join(cache, str(i))),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for i in range(jobs)
        ]
        outs = [p.communicate() for p in procs]
    failed = [(p.returncode, err) for p, (_, err) in zip(procs, outs) if p.returncode != 0]
    if failed:
        raise RuntimeError("aot compile failed:\n" + "\n".join(f"exit {rc}:\n{err}" for rc, err in failed))
    rows = [Compiled(**json.loads(line)) for out, _ in outs for line in out.splitlines() if line.startswith("{")]
    order = {(v.kernel, *_describe(v), a): i for i, (v, a) in enumerate((v, a) for v in all_variants() for a in archs)}
    return sorted(rows, key=lambda c: order[(c.kernel, c.constexprs, c.pointers, c.arch)])


def table(rows: list[Compiled]) -> str:
    """Markdown table of compile results, one row per (variant, arch)."""
    lines = [
        "| kernel | sm | constexprs | pointers | warps | registers | spill stores / loads (B) | compile s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in rows:
        lines.append(
            f"| {c.kernel} | {c.arch} | {c.constexprs} | {c.pointers} | {c.num_warps} | {c.registers} "
            f"| {c.spill_stores} / {c.spill_loads} | {c.seconds:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point: compile (``--shard i/n``: every n-th variant from i, in this process) and print."""
    p = argparse.ArgumentParser(prog="python -m dynvlm.kernels.aot", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", nargs="+", type=int, default=list(ARCHS), help="compute capabilities (default 80 90)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--shard", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of the table")
    args = p.parse_args(argv)
    archs = tuple(args.arch)
    if args.shard is None:
        rows = compile_all(archs, args.jobs)
        print(table(rows))
        print(f"\n{len(rows)} compiled, {sum(c.spills for c in rows)} spill", file=sys.stderr)
        return 0
    i, n = (int(s) for s in args.shard.split("/"))
    pairs = [(v, a) for v in all_variants() for a in archs][i::n]
    for v, a in pairs:
        c = compile_variant(v, a)
        print(json.dumps(asdict(c)) if args.json else c, flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
