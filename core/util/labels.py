"""One way to name a setting in tables, reports and folder names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def setting_label(compressor: str | None, policy: str = "dynamic", budget: str | None = None,
                  extras: Mapping[str, Any] | None = None) -> str:
    """``"<compressor>[@<budget>][ (<policy>)][ key=value ...]"``.

    Args:
        compressor: the compressor's name.
        policy: the budget policy's name; the default ``dynamic`` is not shown.
        budget: what fixes the visual budget, shown after ``@`` (``"36"`` tokens per frame,
            ``"T=8"`` frames, ``"dynamic"``); ``None`` where a table's column already shows it.
        extras: other keys that tell settings apart (``{"lr": 0.001}``), shown as ``key=value``.

    Examples: ``tome@36 (fixed)``, ``pool@dynamic``, ``pool (frames) lr=0.001``.
    """
    label = str(compressor if compressor is not None else "")
    if budget:
        label += f"@{budget}"
    if policy != "dynamic":
        label += f" ({policy})"
    for key, value in (extras or {}).items():
        label += f" {key}={value}"
    return label
