"""Where a run keeps its files, and which file a config tests on.

One home for the names: ``<output_dir>/<name>/`` holds ``config.yaml``, ``checkpoints/last.ckpt``,
``predictions.jsonl`` and, for a sweep, ``results.csv``; a synthetic dataset folder holds
``train.jsonl``, ``val_mc.jsonl`` and ``test_mc.jsonl``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: the checkpoint a fit leaves last, in ``<run>/checkpoints/``
LAST_CHECKPOINT = "last.ckpt"
#: a sweep's (or transfer's) one row per point
RESULTS_CSV = "results.csv"
#: the files of a synthetic dataset folder, per split
SYNTH_FILES = {"train": "train.jsonl", "val": "val_mc.jsonl", "test": "test_mc.jsonl"}


def run_dir(cfg: Mapping[str, Any]) -> Path:
    """``<output_dir>/<name>`` of a run config (defaults ``runs`` and ``run``)."""
    return Path(cfg.get("output_dir") or "runs") / str(cfg.get("name") or "run")


def last_checkpoint(cfg: Mapping[str, Any]) -> Path:
    """``<run>/checkpoints/last.ckpt`` of a run config (it may not exist)."""
    return run_dir(cfg) / "checkpoints" / LAST_CHECKPOINT


def synth_file(synth: Mapping[str, Any], split: str) -> Path:
    """The file of ``split`` in the dataset folder ``synth["out"]`` (a ``data.synth`` section)."""
    return Path(str(synth["out"])).expanduser() / SYNTH_FILES[split]


def test_file(cfg: Mapping[str, Any]) -> Path | None:
    """The multiple-choice file a run config tests on: ``data.test``, else its ``data.synth`` test
    file (``None`` when it has neither, or its synthetic test split is empty)."""
    data = cfg.get("data") or {}
    if data.get("test"):
        return Path(str(data["test"]))
    synth = data.get("synth")
    if synth and synth.get("out") and synth.get("test", 1) != 0:
        return synth_file(synth, "test")
    return None


test_file.__test__ = False  # not a pytest test when imported into a test module


def shown(path: str | Path) -> str:
    """``path`` normalised for printing: relative to the current folder when that is shorter."""
    full = Path(path).expanduser().resolve()
    try:
        rel = full.relative_to(Path.cwd())
    except ValueError:
        return str(full)
    text = str(rel)
    return text if len(text) < len(str(full)) else str(full)


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file (read in 16 MiB blocks: checkpoints of many GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()
