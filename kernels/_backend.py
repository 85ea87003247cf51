"""Backend selection shared by the kernel dispatchers.

Each kernel module exposes a dispatcher taking ``backend: "auto" | "triton" | "torch"``.
The choice is made at call time from the tensor, never at import time, so importing any
kernel module works on a machine without a GPU (and without Triton).
"""

from __future__ import annotations

import os

import torch

from dynvlm.kernels import BACKENDS

try:  # Triton is optional: the torch path must keep working without it
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 - any import failure (missing, broken driver stubs) means "no Triton"
    triton = None
    tl = None

__all__ = ["BACKENDS", "HAS_TRITON", "interpreting", "next_pow2", "resolve_backend", "tl", "triton"]

HAS_TRITON = triton is not None


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1``: Triton kernels then run on CPU tensors (slowly)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, x: torch.Tensor, op: str) -> str:
    """Map ``backend`` (``auto|triton|torch``) to the one that will run on ``x``: ``"triton"`` or ``"torch"``.

    ``auto`` picks Triton when ``x`` is on CUDA and Triton imports, torch otherwise. Asking for
    ``triton`` where it cannot run (no Triton, or a CPU tensor outside the interpreter) raises
    ``ValueError`` naming the reason rather than failing inside a launch.
    """
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if HAS_TRITON and x.is_cuda else "torch"
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
