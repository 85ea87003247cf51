"""Loading and validating run configs.

A config is one or more YAML files (``base: other.yaml`` chains them, relative to the file
that names it), then ``key=value`` overrides from the command line, then omegaconf
interpolation. In a file, ``${here}`` stands for that file's folder (absolute), so recipes
can name files beside them whatever the working directory. Validation rejects, with the key, the file it came from and the valid
choices:

- unknown top-level keys and unknown keys of the dataclass sections in :mod:`dynvlm.schema`;
- values of the wrong type;
- component specs (``model.encoder`` / ``model.compressor`` / ``model.llm``) whose ``name`` is
  not registered or whose keyword arguments the registered class does not accept.

There is no way to import an arbitrary path from YAML: components come from the registry.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import types
import typing
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dynvlm import schema
from dynvlm.registry import PluginError, Registry, get_registry

CLI = "the command line"
HERE = "${here}"


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key, its file and valid choices."""


# ------------------------------------------------------------------------------------------
# loading


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    validate: bool = True,
    registry: Registry | None = None,
) -> DictConfig:
    """Load ``path`` (following ``base:``), apply ``key=value`` overrides, resolve, validate.

    Args:
        path: a YAML file, or ``None`` for overrides only.
        overrides: ``["model.compressor.name=tome", "budget.tokens_per_frame=36", ...]``.
        validate: check keys, types and components (see module docstring).
        registry: the plugin registry to validate components against (default: entry points).

    Returns:
        The resolved ``DictConfig``. :func:`origins_of` gives each leaf key's source file.
    """
    layers: list[tuple[str, DictConfig]] = []
    if path is not None:
        layers.extend(_read_chain(Path(path), seen=()))
    if overrides:
        layers.append((CLI, _parse_overrides(overrides)))
    origins: dict[str, str] = {}
    merged = OmegaConf.create({})
    for source, layer in layers:
        for key in _leaf_keys(layer):
            origins[key] = source
        merged = OmegaConf.merge(merged, layer)
    if "base" in merged:
        del merged["base"]  # consumed by the loader
    try:
        resolved = OmegaConf.create(OmegaConf.to_container(merged, resolve=True))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot resolve interpolation in {_source_list(layers)}: {exc}") from None
    _ORIGINS[id(resolved)] = origins
    weakref.finalize(resolved, _ORIGINS.pop, id(resolved), None)  # an id can be reused after collection
    if validate:
        validate_config(resolved, registry=registry)
    return resolved


_ORIGINS: dict[int, dict[str, str]] = {}


def origins_of(cfg: DictConfig) -> dict[str, str]:
    """``dotted.key -> file (or 'the command line')`` for every leaf of a loaded config."""
    return _ORIGINS.get(id(cfg), {})


def _read_chain(path: Path, seen: tuple[Path, ...]) -> list[tuple[str, DictConfig]]:
    path = path.expanduser()
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    real = path.resolve()
    if real in seen:
        chain = " -> ".join(str(p) for p in (*seen, real))
        raise ConfigError(f"config files name each other as base in a loop: {chain}")
    try:
        # `${here}` is the folder of the file that writes it, so recipes can name their files
        # (shipped weights, base configs' data) independently of the working directory
        text = path.read_text().replace(HERE, str(path.parent.resolve()))
        layer = OmegaConf.create(text)
    except Exception as exc:  # noqa: BLE001 - yaml errors come in several types
        raise ConfigError(f"cannot parse {path}: {exc}") from None
    if not isinstance(layer, DictConfig):
        raise ConfigError(f"{path}: a config file must hold a mapping at top level, got a list")
    layers: list[tuple[str, DictConfig]] = []
    base = layer.get("base")
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: 'base' must be a file name, got {base!r}")
        layers.extend(_read_chain(path.parent / base, (*seen, real)))
    layers.append((str(path), layer))
    return layers


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} from {CLI} is not of the form key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad override on {CLI}: {exc}") from None


def _leaf_keys(node: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(node, DictConfig | dict):
        keys = node.keys()
        if not keys and prefix:
            yield prefix
        for k in keys:
            yield from _leaf_keys(node[k] if isinstance(node, dict) else node._get_node(k), f"{prefix}{k}.")
    elif prefix:
        yield prefix.rstrip(".")
        # containers of lists are leaves too
    return


def _source_list(layers: list[tuple[str, DictConfig]]) -> str:
    return ", ".join(src for src, _ in layers) or CLI


# ------------------------------------------------------------------------------------------
# validation


def validate_config(cfg: DictConfig, registry: Registry | None = None) -> None:
    """Raise :class:`ConfigError` for the first unknown key, wrong type or unknown component."""
    registry = registry or get_registry()
    origins = origins_of(cfg)
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    _validate_tree(data, origins, registry)
    sweep = data.get("sweep")
    if sweep:
        for point in sweep_points(sweep, origins):
            trial = apply_point(data, point)
            trial.pop("sweep", None)
            _validate_tree(trial, origins, registry)


def _validate_tree(data: dict, origins: dict[str, str], registry: Registry) -> None:
    ctx = _Ctx(origins)
    _check_keys(data, schema.TOP_LEVEL, "", ctx)
    for key, expected in schema.TOP_LEVEL.items():
        if key in data and data[key] is not None:
            _check_type(data[key], expected, key, ctx)
    for section, cls in schema.SECTIONS.items():
        if data.get(section) is not None:
            _check_dataclass(data[section], cls, section, ctx)
    model = data.get("model") or {}
    _check_keys(model, dict.fromkeys(schema.MODEL_KEYS), "model", ctx)
    for key, kind in schema.COMPONENT_KEYS.items():
        if model.get(key) is not None:
            _check_component(model[key], kind, f"model.{key}", registry, ctx)
    if model.get("projector") is not None:
        _check_dataclass(model["projector"], schema.ProjectorConfig, "model.projector", ctx)
    for key, expected in schema.MODEL_OPTIONS.items():
        if model.get(key) is not None:
            _check_type(model[key], expected, f"model.{key}", ctx)
    policy = (data.get("budget") or {}).get("policy")
    if policy is not None:  # a registered budget policy, by name or as {name, its own keys}
        _check_component({"name": policy} if isinstance(policy, str) else policy, "budget", "budget.policy", registry, ctx)
    if data.get("trainer") is not None:
        _check_trainer(data["trainer"], ctx)


class _Ctx:
    def __init__(self, origins: dict[str, str]) -> None:
        self.origins = origins

    def where(self, key: str) -> str:
        """The file that set ``key`` (or the nearest parent that has one)."""
        probe = key
        while probe:
            if probe in self.origins:
                return self.origins[probe]
            hits = [src for k, src in self.origins.items() if k.startswith(probe + ".")]
            if hits:
                return hits[-1]
            probe = probe.rpartition(".")[0]
        return "the config"

    def fail(self, key: str, msg: str) -> typing.NoReturn:
        raise ConfigError(f"{key}: {msg} (set in {self.where(key)})")


def _check_keys(section: Any, valid: Mapping[str, Any] | Iterable[str], prefix: str, ctx: _Ctx) -> None:
    if not isinstance(section, dict):
        ctx.fail(prefix, f"expected a mapping, got {type(section).__name__} {section!r}")
    valid_names = list(valid)
    for key in section:
        if key not in valid_names:
            full = f"{prefix}.{key}" if prefix else str(key)
            ctx.fail(full, f"unknown key {key!r}; valid keys{' of ' + prefix if prefix else ''}: {', '.join(sorted(map(str, valid_names)))}")


def _check_dataclass(section: Any, cls: type, prefix: str, ctx: _Ctx) -> None:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_keys(section, fields, prefix, ctx)
    hints = typing.get_type_hints(cls)
    for key, value in section.items():
        _check_type(value, hints[key], f"{prefix}.{key}", ctx)


def _check_component(spec: Any, kind: str, prefix: str, registry: Registry, ctx: _Ctx) -> None:
    if not isinstance(spec, dict) or "name" not in spec:
        ctx.fail(prefix, f"a component spec must be a mapping with a 'name' key naming a registered {kind}; installed: {', '.join(registry.names(kind)) or '(none)'}")
    try:
        comp = registry.get(kind, spec["name"])
    except PluginError as exc:
        ctx.fail(f"{prefix}.name", str(exc))
    params, accepts_any = constructor_params(comp.cls, kind)
    for key, value in spec.items():
        if key == "name":
            continue
        if key not in params:
            if accepts_any:
                continue
            ctx.fail(f"{prefix}.{key}", f"unknown key {key!r} for {kind} {spec['name']!r} ({comp.qualname}); valid keys: {', '.join(['name', *sorted(params)])}")
        if params[key] is not inspect.Parameter.empty:
            _check_type(value, params[key], f"{prefix}.{key}", ctx)


def constructor_params(cls: type, kind: str) -> tuple[dict[str, Any], bool]:
    """``({param: annotation}, accepts **kwargs)`` of ``cls.__init__`` minus core-supplied args."""
    sig = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable annotations: skip type checks
        hints = {}
    params: dict[str, Any] = {}
    accepts_any = False
    for name, p in sig.parameters.items():
        if name == "self" or name in schema.CORE_SUPPLIED.get(kind, ()):
            continue
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            accepts_any = True
        elif p.kind is not inspect.Parameter.VAR_POSITIONAL:
            params[name] = hints.get(name, inspect.Parameter.empty)
    return params, accepts_any


def _check_trainer(trainer: Any, ctx: _Ctx) -> None:
    from pytorch_lightning import Trainer

    params = [n for n in inspect.signature(Trainer.__init__).parameters if n != "self"]
    _check_keys(trainer, params, "trainer", ctx)
    if isinstance(trainer.get("strategy"), dict):  # dynvlm's strategy mapping (dynvlm.run.strategy)
        _check_dataclass(trainer["strategy"], schema.StrategyConfig, "trainer.strategy", ctx)


def _check_type(value: Any, expected: Any, key: str, ctx: _Ctx) -> None:
    if not _matches(value, expected):
        ctx.fail(key, f"expected {_type_name(expected)}, got {type(value).__name__} {value!r}")


def _matches(value: Any, expected: Any) -> bool:
    if expected is Any or expected is inspect.Parameter.empty:
        return True
    if expected is None or expected is type(None):
        return value is None
    origin = typing.get_origin(expected)
    args = typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected in (list, tuple) or origin in (list, tuple, Sequence):
        if not isinstance(value, list | tuple | ListConfig):
            return False
        if args and origin is not tuple:
            return all(_matches(v, args[0]) for v in value)
        return True
    if expected is dict or origin in (dict, Mapping):
        if not isinstance(value, dict):
            return False
        if len(args) == 2:
            return all(_matches(v, args[1]) for v in value.values())
        return True
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True  # annotations we cannot check (callables, protocols) pass


def _type_name(expected: Any) -> str:
    if isinstance(expected, type):
        return expected.__name__
    return str(expected).replace("typing.", "")


# ------------------------------------------------------------------------------------------
# sweeps and components


def sweep_points(sweep: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]],
                 origins: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The points of a ``sweep:``: one grid (``dotted.key -> list of values``, the product in file
    order), or a list of grids whose points are joined in order, a point listed twice kept once
    (e.g. every compressor at every M, plus a baseline at one M)."""
    grids = [sweep] if isinstance(sweep, Mapping) else list(sweep)
    points: list[dict[str, Any]] = []
    for g, grid in enumerate(grids):
        label = "sweep" if isinstance(sweep, Mapping) else f"sweep[{g}]"
        if not isinstance(grid, Mapping) or not grid:
            raise ConfigError(f"{label}: expected a mapping of dotted keys to lists of values, got {grid!r}")
        for key, values in grid.items():
            if not isinstance(values, list | tuple | ListConfig) or len(values) == 0:
                where = (origins or {}).get(f"{label}.{key}", (origins or {}).get("sweep", "the config"))
                raise ConfigError(f"{label}.{key}: expected a non-empty list of values (set in {where})")
        for combo in itertools.product(*grid.values()):
            point = dict(zip(grid, combo))
            if point not in points:
                points.append(point)
    return points


def sweep_keys(sweep: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[str]:
    """The dotted keys a ``sweep:`` varies (the union over its grids, in first-seen order)."""
    grids = [sweep] if isinstance(sweep, Mapping) else list(sweep)
    return list(dict.fromkeys(k for grid in grids for k in grid))


def apply_point(data: dict, point: Mapping[str, Any]) -> dict:
    """A deep copy of plain-dict config ``data`` with each ``dotted.key`` of ``point`` set."""
    cfg = OmegaConf.create(data)
    for key, value in point.items():
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out


def build_component(kind: str, spec: Mapping[str, Any] | DictConfig, registry: Registry | None = None, **core_kwargs: Any) -> Any:
    """Instantiate the registered ``kind`` named by ``spec['name']`` with the spec's other keys.

    ``core_kwargs`` are the arguments the core supplies (e.g. ``dim=C`` for compressors).
    The instance gets ``provenance`` = ``{"kind", "name", "distribution", "version"}``
    so runs can record ``name -> distribution==version``.
    """
    registry = registry or get_registry()
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)  # type: ignore[assignment]
    spec = dict(spec)
    name = spec.pop("name", None)
    if name is None:
        raise ConfigError(f"a {kind} spec needs a 'name'; installed: {', '.join(registry.names(kind))}")
    comp = registry.get(kind, name)
    params, accepts_any = constructor_params(comp.cls, kind)
    unknown = [k for k in spec if k not in params and not accepts_any]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} for {kind} {name!r}; valid keys: {', '.join(['name', *sorted(params)])}")
    obj = comp.cls(**core_kwargs, **spec)
    obj.provenance = {"kind": kind, "name": name, "distribution": comp.distribution, "version": comp.version}
    return obj


def provenance_record(*components: Any) -> dict[str, str]:
    """``{"compressor/pool": "dynvlm==0.1.0", ...}`` for built components (for hparams)."""
    out = {}
    for c in components:
        p = getattr(c, "provenance", None)
        if p:
            out[f"{p['kind']}/{p['name']}"] = f"{p['distribution']}=={p['version']}"
    return out


def to_yaml(cfg: DictConfig | Mapping[str, Any]) -> str:
    """The resolved config as YAML text (what ``--print-config`` prints and runs save)."""
    return OmegaConf.to_yaml(cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg)), resolve=True)
