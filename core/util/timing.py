"""Per-part readings through forward hooks: how much of a counter (wall time, FLOPs, ...) each named
submodule's forward calls account for."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn


class PartMeter:
    """Accumulates, for each named module, the change of ``read()`` across each of its forward calls.

    Args:
        modules: part name -> module (e.g. ``{"encoder": model.encoder, ...}``).
        read: the counter, e.g. ``time.perf_counter`` or a FLOP counter's ``get_total_flops``.

    Attributes:
        totals: part name -> accumulated change (``0`` for a part that never ran).
        active: the parts whose forward is running now, innermost last (for other hooks, such as
            autograd's saved-tensor hooks, to attribute work to a part).

    Use as a context manager, or call :meth:`remove` to detach the hooks.
    """

    def __init__(self, modules: Mapping[str, nn.Module], read: Callable[[], float]) -> None:
        self.read = read
        self.totals: dict[str, float] = dict.fromkeys(modules, 0)
        self.active: list[str] = []
        self._start: dict[str, float] = {}
        self._handles = []
        for name, module in modules.items():
            self._handles.append(module.register_forward_pre_hook(self._enter(name)))
            self._handles.append(module.register_forward_hook(self._leave(name)))

    def _enter(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            self.active.append(name)
            self._start[name] = self.read()

        return hook

    def _leave(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:  # returns None: output unchanged
            self.totals[name] += self.read() - self._start.pop(name)
            self.active.pop()

        return hook

    def remove(self) -> None:
        """Detach the hooks, so the modules run unobserved again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> PartMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
