"""Builds real (unpacked) distributions on disk for plugin-loading tests.

A folder with ``<name>-<version>.dist-info/{METADATA,entry_points.txt}`` beside the plugin
module is what ``importlib.metadata`` finds on ``sys.path``: the same discovery path an
installed wheel takes, without touching the test environment's site-packages.
"""

from __future__ import annotations

import textwrap
from pathlib import Path


def make_distribution(
    root: Path, dist: str, version: str, modules: dict[str, str], entry_points: dict[str, dict[str, str]]
) -> Path:
    """Write ``modules`` (name -> source) and a dist-info declaring ``entry_points``
    (group -> {name: object}) under ``root``; returns ``root`` (to put on ``sys.path``)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in eps.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


COMPRESSOR_MODULE = """
import dynvlm


class {cls}(dynvlm.Compressor):
    def __init__(self, dim: int, keep_first: bool = True) -> None:
        super().__init__(dim)
        self.keep_first = keep_first

    def forward(self, x, grid, tokens):
        return dynvlm.Compressed(x[:, :tokens])


@dynvlm.hookimpl
def register_compressors(register):
    register({name!r}, {cls})
"""


def compressor_module(name: str, cls: str = "TinyCompressor") -> str:
    """Source of a plugin module registering a trivial compressor ``name``."""
    return COMPRESSOR_MODULE.format(name=name, cls=cls)
