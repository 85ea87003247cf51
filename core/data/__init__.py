"""Data: annotation files, the synthetic video-QA generator and the LightningDataModule.

- :mod:`dynvlm.data.annotations`: LLaVA-style training files and multiple-choice eval files
  (VideoMME, MLVU, EgoSchema, PerceptionTest shapes) -> items / :class:`~dynvlm.records.MCQuestion`.
- :mod:`dynvlm.data.benchmarks`: each paper benchmark's record fields and lmms-eval prompt
  (``data.benchmark``); :func:`~dynvlm.data.items.read_items` reads any file into items with them.
- :mod:`dynvlm.data.images`: several images of one question (MuirBench) as one sample.
- :mod:`dynvlm.data.synth`: ``dynvlm data synth`` -- procedurally drawn videos with QA.
- :class:`VideoDataModule`: yields :class:`DataBatch` (a :class:`~dynvlm.records.Batch`).
- :mod:`dynvlm.data.bench`: ``dynvlm bench data`` -- decode and loading throughput.

Names are imported on first use: ``dynvlm data synth`` should not wait for Lightning to import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AnnotationError": "annotations",
    "Item": "annotations",
    "MC_INSTRUCTION": "annotations",
    "format_mc": "annotations",
    "read_items": "items",
    "read_llava": "annotations",
    "read_mc": "annotations",
    "DataBatch": "dataset",
    "VideoQADataset": "dataset",
    "collate": "dataset",
    "Skipped": "datamodule",
    "VideoDataModule": "datamodule",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
