"""Plugin discovery and the component registry.

Plugins are modules named by entry points in the ``dynvlm`` group (first-party ones
included, declared in the root ``pyproject.toml`` like any third-party package). Each
module holds ``@dynvlm.hookimpl`` functions (see :mod:`dynvlm.hookspecs`) that call
``register(name, cls)``.

Loading rules:

- ``DYNVLM_LOAD_PLUGINS=dist_a,dist_b`` loads only entry points of those distributions
  (an empty value loads none).
- A module whose import fails is recorded in :attr:`Registry.failures` with its
  distribution and traceback, a warning is emitted, and the other plugins still load.
- Two plugins registering the same ``(kind, name)`` raise :class:`PluginError` naming both.
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
import os
import threading
import traceback
import warnings
from dataclasses import dataclass
from typing import Any

import pluggy

from dynvlm import hookspecs

ENTRY_POINT_GROUP = "dynvlm"
LOAD_ENV = "DYNVLM_LOAD_PLUGINS"
KINDS = tuple(hookspecs.HOOK_KINDS.values())


class PluginError(RuntimeError):
    """A plugin could not be found, loaded or registered."""


@dataclass(frozen=True)
class Component:
    """One registered component: ``kind`` (compressor/encoder/llm/budget), ``name``, its class and origin."""

    kind: str
    name: str
    cls: type
    plugin: str  # the plugin (module) name it came from
    distribution: str
    version: str

    @property
    def provenance(self) -> str:
        """``distribution==version``, recorded into a run's hparams."""
        return f"{self.distribution}=={self.version}"

    @property
    def qualname(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__}"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin module that failed to import or register."""

    entry_point: str
    distribution: str
    version: str
    error: str
    traceback: str

    def describe(self) -> str:
        return (
            f"plugin {self.entry_point!r} from distribution {self.distribution}=={self.version} "
            f"failed to load: {self.error}\n{self.traceback}"
        )


class Registry:
    """Components registered by plugins, keyed by ``(kind, name)``.

    Build one with :func:`get_registry` (entry points, cached per process) or directly for
    tests, then add in-process plugins with :meth:`add_plugin`.
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.components: dict[tuple[str, str], Component] = {}
        self.failures: list[PluginFailure] = []
        self._origins: dict[str, tuple[str, str]] = {}  # plugin name -> (dist, version)

    # -- loading -------------------------------------------------------------------------
    def load_entry_points(self, allowed: set[str] | None = None) -> None:
        """Import every ``dynvlm`` entry point (restricted to ``allowed`` distributions)."""
        seen: set[tuple[str, str]] = set()
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "<unknown>"
            version = ep.dist.version if ep.dist is not None else "0"
            if allowed is not None and _norm(dist) not in allowed:
                continue
            key = (dist, ep.name)
            if key in seen:  # the same dist can be visible twice on sys.path
                continue
            seen.add(key)
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not take others down
                self._record_failure(ep.name, dist, version, exc)
                continue
            self.add_plugin(module, name=f"{dist}:{ep.name}", distribution=dist, version=version)

    def add_plugin(self, plugin: Any, name: str | None = None, distribution: str = "<local>", version: str = "0") -> None:
        """Register a plugin object (module or instance with hookimpls) and collect its components."""
        name = name or getattr(plugin, "__name__", repr(plugin))
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except Exception as exc:  # noqa: BLE001
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            self._record_failure(name, distribution, version, exc)
            return
        self._origins[name] = (distribution, version)
        for hook_name, kind in hookspecs.HOOK_KINDS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin_name != name:
                    continue
                try:
                    impl.function(register=self._registrar(kind, name, distribution, version))
                except PluginError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the plugin's own hook broke
                    self._record_failure(name, distribution, version, exc)

    def _registrar(self, kind: str, plugin: str, dist: str, version: str):
        def register(name: str, cls: type) -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"{dist} ({plugin}) registered a {kind} with an invalid name {name!r}")
            if not inspect.isclass(cls):
                raise PluginError(f"{dist} ({plugin}) registered {kind} {name!r} as {cls!r}, which is not a class")
            old = self.components.get((kind, name))
            if old is not None:
                raise PluginError(
                    f"{kind} {name!r} is registered twice: by {old.provenance} (plugin {old.plugin}, "
                    f"{old.qualname}) and by {dist}=={version} (plugin {plugin}, {cls.__module__}.{cls.__qualname__}). "
                    f"Uninstall one of them or restrict loading with {LOAD_ENV}."
                )
            self.components[(kind, name)] = Component(kind, name, cls, plugin, dist, version)

        return register

    def _record_failure(self, ep_name: str, dist: str, version: str, exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        failure = PluginFailure(ep_name, dist, version, f"{type(exc).__name__}: {exc}", tb)
        self.failures.append(failure)
        warnings.warn(failure.describe(), RuntimeWarning, stacklevel=3)

    # -- lookup --------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        """Sorted names registered for ``kind``."""
        _check_kind(kind)
        return sorted(n for (k, n) in self.components if k == kind)

    def get(self, kind: str, name: str) -> Component:
        """The component ``name`` of ``kind``; unknown names raise listing the installed ones."""
        _check_kind(kind)
        comp = self.components.get((kind, name))
        if comp is None:
            installed = ", ".join(self.names(kind)) or "(none)"
            msg = f"unknown {kind} {name!r}; installed {kind}s: {installed}"
            if self.failures:
                msg += "; plugins that failed to load: " + ", ".join(
                    f"{f.entry_point} ({f.distribution})" for f in self.failures
                )
            raise PluginError(msg)
        return comp

    def table(self) -> list[Component]:
        """All components sorted by kind then name."""
        order = {k: i for i, k in enumerate(KINDS)}
        return sorted(self.components.values(), key=lambda c: (order.get(c.kind, 99), c.name))


def _norm(dist: str) -> str:
    return dist.strip().lower().replace("_", "-")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise PluginError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")


def allowed_distributions() -> set[str] | None:
    """Distributions named in ``DYNVLM_LOAD_PLUGINS``, or ``None`` when unset (load all)."""
    raw = os.environ.get(LOAD_ENV)
    if raw is None:
        return None
    return {_norm(d) for d in raw.split(",") if d.strip()}


_lock = threading.Lock()
_cached: tuple[tuple[str, ...] | None, Registry] | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry built from entry points (rebuilt when ``DYNVLM_LOAD_PLUGINS``
    changes or ``refresh`` is true)."""
    global _cached
    allowed = allowed_distributions()
    key = tuple(sorted(allowed)) if allowed is not None else None
    with _lock:
        if refresh or _cached is None or _cached[0] != key:
            reg = Registry()
            reg.load_entry_points(allowed)
            _cached = (key, reg)
        return _cached[1]
