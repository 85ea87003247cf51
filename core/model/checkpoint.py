"""Checkpoint files and the rules for loading them into a :class:`~dynvlm.model.video_llm.VideoLLM`.

- :func:`checkpoint_exists` / :func:`checkpoint_missing`: what counts as a checkpoint path (a file, or
  the folder FSDP's ``state_dict: sharded`` writes); every command asks them, none checks ``is_file``.
- :func:`read_checkpoint`: a Lightning ``.ckpt`` file or sharded folder as one dict; :func:`read_weights`:
  the state dict of a ``.ckpt``, ``.pt`` or ``.safetensors`` file or a sharded folder;
  :func:`load_weights`: a state dict into a model.
- The compressor swap rule (:func:`stale_compressor_weights`): evaluating a checkpoint with another
  compressor than it was trained with drops the trained compressor's own weights, and refuses a new
  compressor whose parameters the checkpoint does not hold.
- :func:`trained_config` and :func:`checkpoint_run`: what a checkpoint was trained with, and where.

:func:`dynvlm.model.restore.restore` applies all of them to rebuild a trained model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn

from dynvlm.config import ConfigError

#: our entry in a Lightning checkpoint: the trainable and carried key lists, the stage name
CKPT_KEY = "dynvlm"

#: state-dict prefix of the compressor's weights in a :class:`~dynvlm.model.video_llm.VideoLLM`
COMPRESSOR_PREFIX = "compressor."


class CompressorWeightsError(ConfigError):
    """The evaluated compressor has parameters the checkpoint does not hold (it was trained with another)."""




def trained_compressor(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``model.compressor`` spec a dynvlm checkpoint was trained with (``None`` when it carries no config)."""
    config = (checkpoint.get("hyper_parameters") or {}).get("config") or {}
    spec = (config.get("model") or {}).get("compressor")
    return dict(spec) if isinstance(spec, Mapping) else None


def stale_compressor_weights(checkpoint: Mapping[str, Any], compressor_spec: Mapping[str, Any] | None,
                             compressor: Any, *, fitting: bool = False, source: str = "the checkpoint") -> list[str]:
    """Keys of ``checkpoint["state_dict"]`` to drop because the model's compressor is not the trained one.

    Args:
        checkpoint: a loaded dynvlm checkpoint (``state_dict`` and ``hyper_parameters["config"]``).
        compressor_spec: the model's ``model.compressor`` spec (``{"name": ..., **kwargs}``).
        compressor: the model's compressor module (its parameters are what must be loaded).
        fitting: ``True`` when resuming training: a swapped compressor is then an error, not a transfer.
        source: how to name the checkpoint in messages (its path).

    Returns:
        The trained compressor's weights (``compressor.*`` keys) the model's compressor does not
        have; empty when the compressor names are equal or the checkpoint carries no config
        (the ordinary loading rules apply then). Only these keys may be dropped: any other key the
        model lacks still fails the load.

    Raises:
        CompressorWeightsError: the model's compressor has parameters the checkpoint does not
            hold (it was trained with another compressor), naming them and what to do.
        ConfigError: ``fitting`` with a compressor other than the trained one.
    """
    trained = trained_compressor(checkpoint)
    new = (compressor_spec or {}).get("name")
    if trained is None or new is None or trained.get("name") == new:
        return []
    old = trained.get("name")
    if fitting:
        raise ConfigError(f"{source} was trained with compressor {old!r}; resuming training with {new!r} is not "
                          f"supported: start a new run (another name) to train {new!r}")
    state = checkpoint.get("state_dict") or {}
    own = {COMPRESSOR_PREFIX + k for k in compressor.state_dict()}
    params = [COMPRESSOR_PREFIX + n for n, _ in compressor.named_parameters()]
    missing = [k for k in params if k not in state]
    if missing:
        shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise CompressorWeightsError(
            f"compressor {new!r} has {len(missing)} parameter tensors ({shown}) that {source} does not hold: it was "
            f"trained with {old!r}. Evaluate it with a parameter-free compressor, train a model with "
            f"model.compressor.name={new}, or pass a --checkpoint trained with {new!r}")
    return [k for k in state if k.startswith(COMPRESSOR_PREFIX) and k not in own]


class CheckpointRefused(ConfigError):
    """A checkpoint or weights file holds something a weights-only load does not allow (code, or an
    object of a type outside the allow-list); the message names the file and the type."""


#: the non-tensor types a dynvlm checkpoint may hold besides containers, numbers and strings; empty:
#: Lightning's loop and callback state and dynvlm's hparams (a plain config dict) need nothing more
ALLOWED_TYPES: tuple[type, ...] = ()


def _load_weights_only(path: Path, map_location: str = "cpu") -> Any:
    """``torch.load`` with the weights-only unpickler (tensors, containers, numbers, strings and
    :data:`ALLOWED_TYPES`), memory-mapped where the format allows; never runs code from the file."""
    import pickle

    try:
        with torch.serialization.safe_globals(list(ALLOWED_TYPES)):
            try:
                return torch.load(str(path), map_location=map_location, weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc) and "zip" not in str(exc).lower():
                    raise
                # the legacy (non-zip) format cannot be memory-mapped
                return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc)) or re.search(r"global:? ([\w.]+)", str(exc))
        what = f"the Python global {found.group(1)}" if found else "an object outside the allowed types"
        raise CheckpointRefused(
            f"{path}: refused: it holds {what}, which a weights-only load does not allow. dynvlm never runs "
            "code from a checkpoint; a checkpoint written by dynvlm holds only tensors, numbers, strings and "
            "containers. Re-save the weights as .safetensors, or as a plain state dict from code you trust"
        ) from None


class IncompleteCheckpoint(ConfigError):
    """A checkpoint that lacks weights the model needs from it, or holds weights the model does not have."""


def check_checkpoint_fits(model: nn.Module, checkpoint: Mapping[str, Any], source: str = "the checkpoint") -> None:
    """Refuse a checkpoint whose ``state_dict`` does not fit ``model``.

    A dynvlm checkpoint must hold every parameter of the modules its ``dynvlm`` entry says its run
    trained (those come from training and nowhere else) and every weight the entry says it carries
    (the frozen weights it loaded from a previous stage, or an import's). Another file must hold
    every parameter the model's own stage trains (``requires_grad``). Neither may hold weights the
    model lacks.
    The one documented exception is the compressor swap of a training-free evaluation: the trained
    compressor's weights are dropped before this check (:func:`stale_compressor_weights`), and a
    parameter-free compressor needs nothing from the checkpoint.

    Raises:
        IncompleteCheckpoint: naming ``source`` and the missing or unknown keys.
    """
    state = checkpoint.get("state_dict") or {}
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise IncompleteCheckpoint(
            f"{source} holds {len(unknown)} weights this model does not have, e.g. {unknown[:3]}; "
            "was it saved from a different model config?")
    record = checkpoint.get(CKPT_KEY)
    if isinstance(record, Mapping):
        # a dynvlm checkpoint says which modules its run trained and which weights it carried
        trained = tuple(f"{m}." for m in record.get("trainable", []))
        needed = [n for n, _ in model.named_parameters() if n.startswith(trained)] if trained else []
        needed += [k for k in record.get("carried", []) if k not in needed and k in own]
    else:  # any other file: it must hold what the model's own stage trains
        needed = [n for n, p in model.named_parameters() if p.requires_grad]
    missing = [k for k in needed if k not in state]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise IncompleteCheckpoint(
            f"{source} lacks {len(missing)} of the {len(needed)} weights this model needs from it ({shown}): "
            "the parameters of the modules it was trained on and the weights it says it carries. It is empty, "
            "partial or damaged")


def checkpoint_missing(path: str | Path) -> str | None:
    """Why ``path`` is not a checkpoint, or ``None`` when it is one.

    Args:
        path: a checkpoint file (``.ckpt``, ``.pt``, ``.safetensors``) or a sharded checkpoint folder.

    Returns:
        ``None`` for a file, or a folder holding :data:`SHARDED_META` and :data:`SHARDED_INDEX`;
        otherwise the reason, for the caller to put after the path it names: ``"no such file"``
        (the words every command used before folders were checkpoints), or for a folder what it
        lacks (:func:`_sharded_lacks`).
    """
    path = Path(path).expanduser()
    if path.is_file():
        return None
    if path.is_dir():
        lacks = _sharded_lacks(path)
        return f"a folder, but not a sharded checkpoint: it lacks {lacks}" if lacks else None
    return "no such file"


def checkpoint_exists(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint :func:`read_checkpoint` can read: a file, or a sharded checkpoint
    folder (FSDP with ``state_dict: sharded``: ``meta.pt``, ``.metadata`` and the shards). Nothing is read."""
    return checkpoint_missing(path) is None


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """A Lightning checkpoint, a file or a sharded folder, as one dict, loaded without running code.

    Args:
        path: a ``.ckpt`` file (read by :func:`_load_weights_only`), or a folder written by FSDP with
            ``state_dict: sharded`` (its ``meta.pt`` read weights-only, its index by the allow-listed
            :func:`_read_shard_index`, its shards assembled on the CPU without a process group).
        map_location: where the tensors go (``torch.load``'s ``map_location``).

    Returns:
        The checkpoint dict (``state_dict``, ``hyper_parameters``, the ``dynvlm`` entry, loop state).
        A folder gives the same shape as a file: its ``meta.pt`` with ``state_dict`` holding the full
        weights assembled from the shards (every weight the model had: FSDP shards them all).

    Raises:
        CheckpointRefused: the file, ``meta.pt`` or the shards' index holds code or a type outside the allow-list.
        ConfigError: ``path`` does not exist, is a folder that is not a sharded checkpoint (naming
            what it lacks), or holds no ``state_dict`` mapping (not a Lightning checkpoint).
    """
    path = Path(path).expanduser()
    why = checkpoint_missing(path)
    if why is not None:
        raise ConfigError(f"checkpoint {str(path)!r}: {why}")
    if path.is_dir():
        data = read_sharded_checkpoint(path)
        weights = _sharded_weights(path, data["state_dict"])
        data["state_dict"] = weights if map_location == "cpu" else {k: v.to(map_location) for k, v in weights.items()}
        return data
    data = _load_weights_only(path, map_location)
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        raise ConfigError(f"--checkpoint {str(path)!r}: not a Lightning checkpoint (no state_dict)")
    return data


def trained_config(checkpoint: Mapping[str, Any], path: str | Path) -> dict[str, Any] | None:
    """The run config a checkpoint was trained with: its ``hyper_parameters["config"]``, else the
    ``config.yaml`` of its run folder (``<run>/checkpoints/<file>``), else ``None``."""
    saved = (checkpoint.get("hyper_parameters") or {}).get("config")
    if isinstance(saved, Mapping):
        return dict(saved)
    run = checkpoint_run(path)
    if (run / "config.yaml").is_file():
        loaded = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"), resolve=True)
        return loaded if isinstance(loaded, dict) else None
    return None


def checkpoint_run(path: str | Path) -> Path:
    """The run folder of a checkpoint: ``<run>`` for ``<run>/checkpoints/<file>``, else the file's folder."""
    path = Path(path)
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """The state dict held by a Lightning ``.ckpt`` (its ``state_dict``), a ``.pt`` state dict, a
    ``.safetensors`` file or a sharded checkpoint folder (FSDP ``state_dict: sharded``; the weights are
    assembled from the shards in CPU memory, the optimizer's are not read), loaded without running code
    (:class:`CheckpointRefused` otherwise). Files are memory-mapped: only the weights used are read."""
    path = Path(path).expanduser()
    if path.is_dir():
        lacks = _sharded_lacks(path)
        if lacks:
            raise ConfigError(f"stage.resume_from {str(path)!r}: a folder, but not a sharded checkpoint: it lacks {lacks}")
        return _sharded_weights(path)
    if not path.is_file():
        raise FileNotFoundError(f"stage.resume_from: checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    data = _load_weights_only(path)
    record = data.get(CKPT_KEY) if isinstance(data, dict) else None
    if isinstance(data, dict) and "state_dict" in data:
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise ValueError(f"{path}: not a checkpoint or state dict (expected a mapping of tensors)")
    if not data:
        raise IncompleteCheckpoint(f"{path}: holds no weights")
    # a dynvlm checkpoint names the modules its stage trained: each must have its weights in the file
    empty = [m for m in (record or {}).get("trainable", []) if not any(k.startswith(f"{m}.") for k in data)]
    if empty:
        raise IncompleteCheckpoint(f"{path}: its stage trained {', '.join(empty)} but it holds none of their weights "
                                   "(a partial or damaged checkpoint)")
    return data


#: (file, skipped keys) already warned about by :func:`load_weights` in this process
_SKIP_WARNED: set[tuple[str, tuple[str, ...]]] = set()


def load_weights(model: nn.Module, weights: Mapping[str, Tensor], source: str = "checkpoint",
                 optional: tuple[str, ...] = ()) -> list[str]:
    """Copy ``weights`` into ``model`` (a subset of its state dict); return the keys loaded.

    Raises ``ValueError`` naming unknown keys or mismatched shapes: a checkpoint from a
    different architecture must not load silently. Unknown keys under an ``optional`` prefix
    (e.g. ``"compressor."``: a base carries the scorer of the compressor it was trained with,
    which a fine-tune with another compressor does not have) are skipped with a warning (``rank_zero_warn``).
    """
    own = model.state_dict()
    skipped = [k for k in weights if k not in own and k.startswith(optional)]
    if skipped:
        # a warning, not INFO: a run silently dropping weights it was pointed at must be visible; once
        # per file and key set in a process (a sweep builds a model per point, twice)
        if (source, tuple(skipped)) not in _SKIP_WARNED:
            _SKIP_WARNED.add((source, tuple(skipped)))
            rank_zero_warn(f"{source}: {len(skipped)} weights not used by this model were skipped "
                           f"({', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''})")
        weights = {k: v for k, v in weights.items() if k not in skipped}
    unknown = [k for k in weights if k not in own]
    if unknown:
        raise ValueError(f"{source}: {len(unknown)} weights do not exist in this model, e.g. {unknown[:3]}; "
                         "was it saved from a different model config?")
    bad = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in weights if weights[k].shape != own[k].shape]
    if bad:
        raise ValueError(f"{source}: shape mismatch for {len(bad)} weights, e.g. {bad[:3]}")
    model.load_state_dict(dict(weights), strict=False)
    return list(weights)


#: the files of a Lightning sharded (FSDP) checkpoint folder: the non-weight state, and the shards' index
SHARDED_META = "meta.pt"
SHARDED_INDEX = ".metadata"
#: what the shards' index (a pickle written by ``torch.distributed.checkpoint``) may name: its own
#: metadata classes, tensor sizes and dtypes, and plain containers. Anything else is refused unread.
_INDEX_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.planner",
                  "torch.distributed.checkpoint.filesystem", "torch.distributed.checkpoint._extension")
_INDEX_GLOBALS = {("torch", "Size"), ("torch", "device"), ("collections", "OrderedDict"), ("builtins", "set"),
                  ("builtins", "frozenset"),
                  ("pathlib", "PosixPath"), ("torch.serialization", "_get_layout")}


def _read_shard_index(folder: Path) -> Any:
    """The ``torch.distributed.checkpoint`` index of a sharded folder, unpickled with an allow-list
    (:data:`_INDEX_MODULES`, :data:`_INDEX_GLOBALS`, dtypes): the index is a pickle, and nothing else in a
    checkpoint may run code. Raises :class:`CheckpointRefused` naming a global outside the list."""
    import pickle

    index = folder / SHARDED_INDEX

    class IndexUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
            if module in _INDEX_MODULES or (module, name) in _INDEX_GLOBALS or dtype:
                return super().find_class(module, name)
            raise CheckpointRefused(f"{index}: refused: it names the Python global {module}.{name}, which a "
                                    "sharded checkpoint's index does not hold; dynvlm never runs code from a checkpoint")

    with open(index, "rb") as f:
        return IndexUnpickler(f).load()


def read_sharded_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning sharded checkpoint folder as :func:`read_checkpoint` gives a file: its ``meta.pt``
    (loop state, hparams, the ``dynvlm`` entry; weights-only) with a ``state_dict`` of meta-device tensors
    of the shapes the shards hold (names and shapes, no data: what the checks before resuming need)."""
    folder = Path(path)
    lacks = _sharded_lacks(folder)
    if lacks:
        raise ConfigError(f"checkpoint folder {str(folder)!r}: not a sharded checkpoint: it lacks {lacks}")
    data = _load_weights_only(folder / SHARDED_META)
    if not isinstance(data, dict):
        raise ConfigError(f"{folder / SHARDED_META}: not a Lightning checkpoint's metadata")
    entries = _read_shard_index(folder).state_dict_metadata
    data["state_dict"] = {k.removeprefix("model."): torch.empty(tuple(m.size), dtype=m.properties.dtype, device="meta")
                          for k, m in entries.items() if k.startswith("model.") and hasattr(m, "size")}
    return data


def _sharded_lacks(folder: Path) -> str:
    """What ``folder`` lacks of a sharded checkpoint (``"meta.pt and .metadata"``, ...); empty when nothing."""
    missing = [name for name in (SHARDED_META, SHARDED_INDEX) if not (folder / name).is_file()]
    return " and ".join(missing) + (" (FSDP with state_dict: sharded writes both)" if missing else "")


def _sharded_weights(folder: Path, shapes: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The model weights of a sharded checkpoint folder, assembled in CPU memory without a process group.
    ``shapes``: the meta-device ``state_dict`` of :func:`read_sharded_checkpoint`, when already read."""
    import torch.distributed.checkpoint as dcp

    if shapes is None:
        shapes = read_sharded_checkpoint(folder)["state_dict"]
    state = {"model": {k: torch.empty(v.shape, dtype=v.dtype) for k, v in shapes.items()}}
    dcp.load(state, checkpoint_id=str(folder), no_dist=True)
    if not state["model"]:
        raise IncompleteCheckpoint(f"{folder}: holds no weights")
    return state["model"]
