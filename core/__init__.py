"""dynvlm: a plugin framework for research on visual-token compressors in video LLMs.

Public API:

- component interfaces: :class:`Compressor`, :class:`Compressed`, :class:`VisionEncoder`,
  :class:`LanguageModel`, :class:`PromptFormat` (shapes in :mod:`dynvlm.interfaces`)
- plugin markers: :data:`hookimpl` (and :data:`hookspec` for new hook kinds)
- the registry: :func:`get_registry`, :class:`Registry`, :class:`PluginError`, :class:`Component`
- configs: :func:`load_config`, :func:`build_component`, :class:`ConfigError`

Names are imported on first use (PEP 562), so ``import dynvlm`` alone does not import torch:
the ``lightning`` console script hands foreign commands on without paying for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Compressed": "interfaces",
    "Compressor": "interfaces",
    "LanguageModel": "interfaces",
    "PromptFormat": "interfaces",
    "VisionEncoder": "interfaces",
    "hookimpl": "hookspecs",
    "hookspec": "hookspecs",
    "Component": "registry",
    "PluginError": "registry",
    "Registry": "registry",
    "get_registry": "registry",
    "ConfigError": "config",
    "build_component": "config",
    "load_config": "config",
}

__all__ = [
    "Component",
    "Compressed",
    "Compressor",
    "ConfigError",
    "LanguageModel",
    "PluginError",
    "PromptFormat",
    "Registry",
    "VisionEncoder",
    "__version__",
    "build_component",
    "get_registry",
    "hookimpl",
    "hookspec",
    "load_config",
]

if TYPE_CHECKING:  # pragma: no cover
    from dynvlm.config import ConfigError, build_component, load_config
    from dynvlm.hookspecs import hookimpl, hookspec
    from dynvlm.interfaces import Compressed, Compressor, LanguageModel, PromptFormat, VisionEncoder
    from dynvlm.registry import Component, PluginError, Registry, get_registry


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dynvlm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
