"""The LightningDataModule: config sections in, DataLoaders of :class:`DataBatch` out."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from dynvlm.data.annotations import MC_INSTRUCTION, Item
from dynvlm.data.dataset import DataBatch, VideoQADataset, collate
from dynvlm.data.items import read_items
from dynvlm.data.video import VideoReadError
from dynvlm.schema import BudgetConfig, DataConfig, section
from dynvlm.util.paths import synth_file

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# where each split comes from in a generated synthetic folder when data.<split> is not set


@dataclass
class Skipped:
    """A file (or annotation line) left out: ``file``, ``reason``, ``split``."""

    file: str
    reason: str
    split: str


class _TrackingLoader(DataLoader):
    """A DataLoader that hands each batch's skips to its DataModule (skips happen in workers)."""

    def __init__(self, *args: Any, on_skip: Any = None, split: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_skip, self.split = on_skip, split

    def __iter__(self):  # type: ignore[override]
        for batch in super().__iter__():
            if self.on_skip is not None and batch.skipped:
                self.on_skip(self.split, batch.skipped)
            yield batch


class VideoDataModule(pl.LightningDataModule):
    """Training and evaluation data for a run.

    Args:
        data: the ``data`` section (:class:`~dynvlm.schema.DataConfig`, dict or DictConfig).
        budget: the ``budget`` section; ``fps`` and ``max_frames`` decide the frames read.

    Each dataloader yields :class:`DataBatch` (a :class:`~dynvlm.records.Batch`): a list of
    :class:`~dynvlm.records.Sample` with uint8 ``[T, H, W, 3]`` frames, ``T`` per video.
    Annotation files may be LLaVA-style (training conversations) or multiple-choice (eval
    samples with ``meta`` = options, answer index, category, question_id). With ``data.synth``
    set, :meth:`prepare_data` generates that synthetic dataset first (once per settings), and
    unset splits default to its files.

    Attributes:
        skipped: :class:`Skipped` files and annotation lines, once each per split.
        skip_events: how many times an item was skipped (a broken training file counts each epoch).
    """

    def __init__(self, data: DataConfig | dict | Any = None, budget: BudgetConfig | dict | Any = None) -> None:
        super().__init__()
        self.data: DataConfig = section(DataConfig, data, "data")
        self.budget: BudgetConfig = section(BudgetConfig, budget, "budget")
        if self.data.on_error not in ("skip", "raise"):
            raise ValueError(f"data.on_error must be 'skip' or 'raise', got {self.data.on_error!r}")
        self.skipped: list[Skipped] = []
        self.skip_events = 0
        self._seen: set[tuple[str, str]] = set()
        self._datasets: dict[str, VideoQADataset] = {}
        self.is_mc: dict[str, bool] = {}

    # -- sources ---------------------------------------------------------------------------

    def source(self, split: str) -> Path | None:
        """The annotation file of ``split`` (``data.<split>``, else the synthetic folder's file)."""
        explicit = getattr(self.data, split)
        if explicit:
            return Path(explicit).expanduser()
        if self.data.synth and self.data.synth.get(split, 1) != 0:
            return synth_file(self.data.synth, split)
        return None

    def prepare_data(self) -> None:
        """Generate ``data.synth`` if set and not already there (idempotent, keyed by its settings)."""
        if self.data.synth:
            from dynvlm.data import synth

            settings = dict(self.data.synth)
            if "out" not in settings:
                raise ValueError("data.synth needs 'out', the folder to write the synthetic dataset to")
            synth.generate(settings)

    def setup(self, stage: str | None = None) -> None:
        """Read the annotation files the stage needs (``fit``: train+val; ``validate``; ``test``)."""
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage or "", SPLITS):
            if split not in self._datasets and self.source(split) is not None:
                self._datasets[split] = self._build(split)

    def _build(self, split: str) -> VideoQADataset:
        path = self.source(split)
        assert path is not None
        if self.data.synth and not (Path(str(self.data.synth.get("out", ""))) / "manifest.json").exists():
            # used outside a Trainer (which calls prepare_data first, on one process): generate now
            self.prepare_data()
        instruction = self.data.mc_instruction if self.data.mc_instruction is not None else MC_INSTRUCTION
        items, problems, is_mc = read_items(path, self.data.on_error, instruction, self.data.benchmark)
        self.is_mc[split] = is_mc
        if problems:
            self._record(split, problems)
        if self.data.max_samples is not None:
            items = items[: self.data.max_samples]
        root = Path(self.data.root).expanduser() if self.data.root else path.parent
        ds = VideoQADataset(
            items, root, self.budget.fps, self.budget.max_frames, self.data.backend, self.data.on_error,
            substitute=(split == "train"),
            cache=self.data.cache if self.data.cache is not None else bool(self.data.synth),
        )
        ds.items = self._drop_missing(ds, split)
        log.info("%s: %d %s items from %s", split, len(ds.items), "multiple-choice" if is_mc else "conversation", path)
        return ds

    def _drop_missing(self, ds: VideoQADataset, split: str) -> list[Item]:
        # a stat per item here saves decoding attempts (and empty eval batches) later
        keep, missing = [], []
        for item in ds.items:
            p = ds.path_of(item)
            if p.is_file():
                keep.append(item)
            elif self.data.on_error == "raise":
                raise VideoReadError(p, f"no such file (named at {item.where})")
            else:
                missing.append((str(p), f"no such file (named at {item.where})"))
        if missing:
            self._record(split, missing)
        if missing and not keep:
            raise RuntimeError(f"{split}: no usable items in {self.source(split)} ({len(missing)} media files missing)")
        return keep

    def dataset(self, split: str) -> VideoQADataset:
        """The :class:`VideoQADataset` of ``split`` (set up on first use)."""
        if split not in self._datasets:
            if self.source(split) is None:
                raise ValueError(f"no {split} data: set data.{split} to an annotation file (or data.synth)")
            self._datasets[split] = self._build(split)
        return self._datasets[split]

    # -- loaders ---------------------------------------------------------------------------

    def _loader(self, split: str) -> DataLoader:
        ds = self.dataset(split)
        train = split == "train"
        bs = self.data.batch_size if train else (self.data.eval_batch_size or self.data.batch_size)
        workers = self.data.num_workers
        return _TrackingLoader(
            ds,
            batch_size=bs,
            shuffle=train and self.data.shuffle,
            num_workers=workers,
            collate_fn=collate,
            persistent_workers=workers > 0,
            on_skip=self._record,
            split=split,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (``data.batch_size``)."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in file order (``data.eval_batch_size``); ``[]`` (Lightning then skips
        validation) when no validation data is configured."""
        if self.source("val") is None:
            return []
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        """Test batches in file order (``data.eval_batch_size``)."""
        return self._loader("test")

    # -- skips -----------------------------------------------------------------------------

    def _record(self, split: str, skipped: list[tuple[str, str]]) -> None:
        for file, reason in skipped:
            self.skip_events += 1
            if (file, split) in self._seen:
                continue
            self._seen.add((file, split))
            self.skipped.append(Skipped(file, reason, split))
            log.warning("skipped %s (%s): %s", file, split, reason)

    def skip_summary(self) -> str:
        """One line: how many files were skipped, per split, and their names."""
        if not self.skipped:
            return "no files skipped"
        per = {s: sum(1 for k in self.skipped if k.split == s) for s in SPLITS}
        names = ", ".join(k.file for k in self.skipped)
        counts = ", ".join(f"{s} {n}" for s, n in per.items() if n)
        return f"skipped {len(self.skipped)} files ({counts}; {self.skip_events} times): {names}"

    def teardown(self, stage: str | None = None) -> None:
        """Log the skip summary at the end of a stage."""
        if self.skipped:
            log.warning(self.skip_summary())


__all__ = ["DataBatch", "Skipped", "VideoDataModule"]
