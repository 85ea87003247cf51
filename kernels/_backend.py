"""Backend selection shared by the kernel dispatchers.

Each kernel module exposes a dispatcher taking ``backend: "auto" | "triton" | "torch"``.
The choice is made at call time from the tensor, never at import time, so importing any
kernel module works on a machine without a GPU (and without Triton).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from dynvlm.kernels import BACKENDS

try:  # Triton is optional: the torch path must keep working without it
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 - any import failure (missing, broken driver stubs) means "no Triton"
    triton = None
    tl = None

__all__ = [
    "BACKENDS",
    "HAS_TRITON",
    "KERNEL_DTYPES",
    "Variant",
    "interpreting",
    "launch",
    "next_pow2",
    "record_variants",
    "resolve_backend",
    "tl",
    "triton",
]

HAS_TRITON = triton is not None
# the input dtypes the Triton paths take; anything else (fp64: gradcheck) runs the torch path
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1``: Triton kernels then run on CPU tensors (slowly)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, x: torch.Tensor, op: str, unsupported: str | None = None) -> str:
    """Map ``backend`` (``auto|triton|torch``) to the one that will run on ``x``: ``"triton"`` or ``"torch"``.

    ``auto`` picks Triton when ``x`` is on CUDA, Triton imports and the kernels take the call,
    torch otherwise. ``unsupported`` is the caller's reason why its kernels do not take this
    call (a dtype or size outside the variants compiled ahead of time, see :class:`Variant`),
    ``None`` when they do. Asking for ``triton`` where it cannot run (no Triton, a CPU tensor
    outside the interpreter, an unsupported call) raises ``ValueError`` naming the reason
    rather than failing inside a launch.
    """
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if x.dtype not in KERNEL_DTYPES:
        unsupported = unsupported or f"dtype {x.dtype} (the kernels take float32, bfloat16, float16)"
    if backend == "auto":
        return "triton" if HAS_TRITON and x.is_cuda and unsupported is None else "torch"
    if unsupported is not None:
        raise ValueError(f"{op}: backend='triton' cannot take this call: {unsupported}; use backend='torch' or 'auto'")
    if not HAS_TRITON:
        raise ValueError(f"{op}: backend='triton' requested but triton cannot be imported; use backend='torch'")
    if not x.is_cuda and not interpreting():
        raise ValueError(
            f"{op}: backend='triton' needs a CUDA tensor (got device {x.device}) or TRITON_INTERPRET=1 "
            "set before the kernels are imported; use backend='torch' or 'auto'"
        )
    return "triton"


def next_pow2(n: int) -> int:
    """Smallest power of two ``>= n`` (and ``>= 1``): Triton block sizes must be powers of two."""
    return 1 << max(0, int(n) - 1).bit_length()


def out_dtype_for_kernel(x: torch.Tensor) -> torch.dtype:
    """Dtype a kernel should store in.

    Kernels compute in fp32. On CUDA they store straight into ``x.dtype``; under the
    interpreter fp32 -> bf16/fp16 casts truncate instead of rounding, so they store fp32
    and the wrapper rounds with torch.
    """
    return x.dtype if x.is_cuda else torch.float32


# ---------------------------------------------------------------------------------------------
# variants: the compiled forms of each kernel, enumerable ahead of time

_TRITON_DTYPE = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float64: "fp64",
    torch.int64: "i64",
    torch.int32: "i32",
}


@dataclass(frozen=True)
class Variant:
    """One compiled form of a Triton kernel: everything ``triton.compile`` needs ahead of time.

    Launchers build the variant of each launch with the same function that enumerates them
    (each kernel module's ``gpu_variants()``), so the set the tests compile for sm_80/sm_90
    is the set a GPU can launch.

    Attributes:
        kernel: ``"module.function"`` inside ``dynvlm.kernels`` (e.g. ``"tome._match_kernel"``).
        pointers: ``(argument, dtype)`` of every pointer argument, dtypes as Triton names them.
        constexprs: ``(name, value)`` of every ``tl.constexpr`` argument (the GPU block sizes).
        num_warps: warps per program.
        example: ``key=value`` words naming a call that launches this variant (``dtype=bfloat16
            w=33 ow=1``: what gpu_check runs, see :meth:`example_args`); not part of equality.
    """

    kernel: str
    pointers: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, int | bool], ...]
    num_warps: int = 4
    example: str = field(default="", compare=False)

    def example_args(self) -> dict[str, str]:
        """:attr:`example` as a dict (``{"dtype": "bfloat16", "w": "33", "ow": "1"}``)."""
        return dict(word.split("=", 1) for word in self.example.split())

    def meta(self) -> dict[str, int | bool]:
        """Launch keywords: the constexprs and ``num_warps``."""
        return {**dict(self.constexprs), "num_warps": self.num_warps}

    def signature(self, arg_names: list[str]) -> dict[str, str]:
        """``triton.compile`` signature: pointers typed, constexprs marked, other (integer) arguments ``i32``."""
        ptrs, consts = dict(self.pointers), dict(self.constexprs)
        return {a: f"*{ptrs[a]}" if a in ptrs else "constexpr" if a in consts else "i32" for a in arg_names}


def variant(
    kernel: str,
    pointers: dict[str, torch.dtype],
    constexprs: dict[str, int | bool],
    num_warps: int = 4,
    example: str = "",
) -> Variant:
    """Build a :class:`Variant` from torch dtypes (sorted, so equal launches give equal variants)."""
    ptrs = tuple((k, _TRITON_DTYPE[v]) for k, v in pointers.items())
    return Variant(kernel, ptrs, tuple(sorted(constexprs.items())), num_warps, example)


_RECORDERS: list[set[Variant]] = []


@contextmanager
def record_variants() -> Iterator[set[Variant]]:
    """Collect the :class:`Variant` of every launch made inside the block (the GPU's choice, also
    under the interpreter, which runs its own larger blocks): how the tests check that gpu_check
    reaches every variant."""
    seen: set[Variant] = set()
    _RECORDERS.append(seen)
    try:
        yield seen
    finally:
        _RECORDERS.remove(seen)


def launch(kernel, grid: tuple[int, ...], args: tuple, v: Variant, cpu_meta: dict[str, int | bool]) -> None:
    """Launch ``kernel[grid](*args)``: with ``v``'s blocks on CUDA, with ``cpu_meta`` under the interpreter.

    On CUDA the pointer dtypes are checked against ``v`` first, so a launch outside the
    enumerated (and ahead-of-time compiled) variants fails loudly instead of compiling
    something no test has seen.
    """
    for seen in _RECORDERS:
        seen.add(v)
    on_gpu = any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)
    if on_gpu:
        names = kernel.arg_names
        got = tuple(
            (n, _TRITON_DTYPE.get(a.dtype, str(a.dtype))) for n, a in zip(names, args) if isinstance(a, torch.Tensor)
        )
        if got != v.pointers:
            raise RuntimeError(f"{v.kernel}: launched with pointer dtypes {got}, but its variant says {v.pointers}")
    kernel[grid](*args, **(v.meta() if on_gpu else cpu_meta))
