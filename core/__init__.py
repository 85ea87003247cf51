"""dynvlm: a plugin framework for research on visual-token compressors in video LLMs.

Public API:

- component interfaces: :class:`Compressor`, :class:`Compressed`, :class:`VisionEncoder`,
  :class:`LanguageModel` (shapes in :mod:`dynvlm.interfaces`)
- plugin markers: :data:`hookimpl` (and :data:`hookspec` for new hook kinds)
- the registry: :func:`get_registry`, :class:`Registry`, :class:`PluginError`
- configs: :func:`load_config`, :func:`build_component`, :class:`ConfigError`
"""

from .config import ConfigError, build_component, load_config
from .hookspecs import hookimpl, hookspec
from .interfaces import Compressed, Compressor, LanguageModel, VisionEncoder
from .registry import Component, PluginError, Registry, get_registry

__version__ = "0.1.0"

__all__ = [
    "Compressed",
    "Compressor",
    "Component",
    "ConfigError",
    "LanguageModel",
    "PluginError",
    "Registry",
    "VisionEncoder",
    "__version__",
    "build_component",
    "get_registry",
    "hookimpl",
    "hookspec",
    "load_config",
]
