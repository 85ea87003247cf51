"""Peak memory: the GPU's allocator on CUDA, the process's peak resident set (``VmHWM``) on CPU."""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def proc_status_bytes(field: str) -> int | None:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...) in bytes; ``None`` where
    the file or field is absent (not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError):
        pass
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device | str = "cpu") -> bool:
    """Start a new peak: CUDA's max-allocated counter, or on CPU the process's ``VmHWM`` (Linux
    resets it to the current resident set). Returns whether the counter could be reset."""
    device = torch.device(device)
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_bytes(device: torch.device | str = "cpu") -> tuple[int, str]:
    """``(bytes, source)``: the peak since the last :func:`reset_peak` (CUDA max allocated, CPU
    ``VmHWM``), else the process's lifetime peak resident set (``ru_maxrss``)."""
    device = torch.device(device)
    if device.type == "cuda":
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    hwm = proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm, "cpu VmHWM (peak resident set)"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu ru_maxrss (process lifetime peak)"


def measure_peak(run: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[int, int, str]:
    """``(peak bytes, peak - bytes in use before, source)`` of one call of ``run``.

    Without a resettable counter the peak is the process's lifetime peak and the delta a lower bound
    (the source says so).
    """
    device = torch.device(device)
    if device.type == "cuda":
        _sync(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = proc_status_bytes("VmRSS")
    if reset_peak(device) and before is not None:
        run()
        peak, source = peak_bytes(device)
        if device.type != "cuda":
            source = "cpu VmHWM (peak resident set, reset before the call)"
        return peak, max(0, peak - before), source
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    run()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return after, after - start, "cpu ru_maxrss (process lifetime peak; delta is a lower bound)"
