"""Tensor memory followed op by op, on any device (the meta device included), and measured on the CPU.

:class:`LiveTensorMemory` is a ``TorchDispatchMode``: every storage an op creates is counted while it lives
(a weak reference drops it when the last tensor on it goes), so running a training step on the meta device
gives the bytes that step holds at its peak -- activations, their gradients, the loss's logits -- with no
memory and no arithmetic. Storages that existed before the mode (parameters) are not counted.

:func:`cpu_allocation_peak` measures the same quantity for a real CPU run: the peak, above the start, of
the bytes torch's CPU allocator reports allocated (the profiler's memory events), so planned and measured
numbers compare on tiny models.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorMemory(TorchDispatchMode):
    """Bytes of the storages created inside the mode that are alive; :attr:`peak` is their maximum.

    :attr:`tag` labels new storages (e.g. the model part running); :attr:`peak_by_tag` is the split of the
    live bytes at the peak. ``device`` (a type, e.g. ``"meta"``) counts only tensors there: a model on the meta
    device stands for the GPU, and the host tensors its inputs start as are not GPU memory.
    """

    def __init__(self, device: str | None = None) -> None:
        super().__init__()
        self.device = device
        self.live = 0
        self.peak = 0
        self.tag = ""
        self.by_tag: dict[str, int] = {}
        self.peak_by_tag: dict[str, int] = {}
        self._seen: dict[int, Any] = {}

    def _release(self, key: int, size: int, tag: str) -> None:
        self._seen.pop(key, None)
        self.live -= size
        self.by_tag[tag] -= size

    def track(self, tensor: torch.Tensor) -> None:
        """Count ``tensor``'s storage (once) until it is freed."""
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._seen and self._seen[key]() is storage:
            return
        size = int(storage.nbytes())
        tag = self.tag
        self._seen[key] = weakref.ref(storage, lambda _, k=key, s=size, t=tag: self._release(k, s, t))
        self.live += size
        self.by_tag[tag] = self.by_tag.get(tag, 0) + size
        if self.live > self.peak:
            self.peak = self.live
            self.peak_by_tag = {k: v for k, v in self.by_tag.items() if v}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t.is_sparse and self.device in (None, t.device.type):
                self.track(t)
        return out


def cpu_allocation_peak(run: Callable[[], Any]) -> int:
    """Peak bytes allocated by torch's CPU allocator during ``run()``, above what was allocated at its start:
    the profiler's allocation records (one per allocation and free, each with the allocator's running total)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        run()

    def walk(nodes: Any) -> Any:
        for node in nodes:
            yield node
            yield from walk(node.children)

    records = sorted((n for n in walk(prof.profiler.kineto_results.experimental_event_tree())
                      if n.tag == _EventType.Allocation and n.extra_fields.device.type == "cpu"),
                     key=lambda n: n.start_time_ns)
    if not records:
        return 0
    start = records[0].extra_fields.total_allocated - records[0].extra_fields.alloc_size
    return max(0, max(n.extra_fields.total_allocated for n in records) - start)
