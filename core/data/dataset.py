"""Items -> decoded samples, and the collate that makes a :class:`DataBatch`.

A dataset item is decoded in whichever process asks for it (a DataLoader worker opens its own
reader per item). A file that fails is either raised (``on_error="raise"``: the
:class:`~dynvlm.data.video.VideoReadError` names it) or skipped: training substitutes the next
readable item so batches keep their size; evaluation drops it (substituting would count another
question twice). Skips travel with the batch to the main process in :attr:`DataBatch.skipped`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from dynvlm.data.annotations import Item
from dynvlm.data.images import IMAGES_KIND, image_array, stack_images
from dynvlm.data.video import VideoReadError, read_video
from dynvlm.records import Batch, Sample

MAX_SUBSTITUTES = 16  # training: how many following items to try in place of a broken one

#: frames decoded by any dataset with ``cache`` on, keyed by file (path, size, mtime) and decode
#: settings: the DataModules of a sweep's points (one process) and the several questions of one
#: clip in a multiple-choice file decode each file once
_SHARED_FRAMES: dict[tuple, tuple[torch.Tensor, list[float], str, float, float]] = {}


def _shared_key(path: Path, fps: float | None, max_frames: int | None, backend: str) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path), st.st_size, st.st_mtime_ns, fps, max_frames, backend)


@dataclass
class DataBatch(Batch):
    """A :class:`~dynvlm.records.Batch` plus ``skipped``: ``(file, reason)`` of items this batch left out."""

    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Loaded:
    """What :meth:`VideoQADataset.__getitem__` returns: the sample (``None`` when dropped) and the skips."""

    sample: Sample | None
    skipped: list[tuple[str, str]] = field(default_factory=list)


class VideoQADataset(Dataset):
    """Decodes annotation items into :class:`~dynvlm.records.Sample` (uint8 ``[T, H, W, 3]`` frames).

    Args:
        items: records from :func:`dynvlm.data.items.read_items`.
        root: folder relative media paths are resolved against.
        fps, max_frames, backend: passed to :func:`dynvlm.data.video.read_video`.
        on_error: ``"raise"`` or ``"skip"``.
        substitute: on skip, return the next readable item instead (training) or nothing (eval).
        cache: keep decoded frames in memory (per process) so later epochs skip decoding; for
            small datasets such as the synthetic one, where decoding costs more than a tiny
            model's step.
    """

    def __init__(
        self,
        items: list[Item],
        root: str | Path,
        fps: float | None = 1.0,
        max_frames: int | None = 128,
        backend: str = "auto",
        on_error: str = "skip",
        substitute: bool = True,
        cache: bool = False,
    ) -> None:
        self.items = items
        self.root = Path(root)
        self.fps, self.max_frames, self.backend = fps, max_frames, backend
        self.on_error, self.substitute = on_error, substitute
        self.cache = cache
        self._frames: dict[int, tuple[torch.Tensor, list[float], str, float, float]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def path_of(self, item: Item) -> Path:
        """Absolute media path of ``item``."""
        p = Path(item.media).expanduser()
        return p if p.is_absolute() else self.root / p

    def decode(self, item: Item, index: int | None = None) -> Sample:
        """One item -> :class:`Sample`; raises :class:`VideoReadError` naming the file.

        ``index`` (the item's position) keys the frame cache when ``cache`` is on.
        """
        path = self.path_of(item)
        if item.kind == IMAGES_KIND:
            return self._decode_images(item, path)
        hit = self._frames.get(index) if index is not None else None
        key = _shared_key(path, self.fps, self.max_frames, self.backend) if self.cache and hit is None else None
        if hit is None and key is not None:
            hit = _SHARED_FRAMES.get(key)
        if hit is None:
            clip = read_video(path, fps=self.fps, max_frames=self.max_frames, backend=self.backend)
            hit = (torch.from_numpy(clip.frames), list(clip.timestamps), clip.backend, clip.duration, clip.native_fps)
            if key is not None:
                _SHARED_FRAMES[key] = hit
        if self.cache and index is not None:
            self._frames[index] = hit
        frames, timestamps, backend, duration, native_fps = hit
        kind = "image" if backend == "image" else item.kind
        meta = dict(item.meta)
        # the decoded clip's length plans the budget: an annotation's `duration` may be a label
        # (VideoMME: "short") or the length of the source video the clip was cut from (MLVU)
        annotated = meta.pop("duration", None)
        if annotated is not None:
            meta["annotated_duration"] = annotated
        meta["duration"] = duration
        # policies read the source frame rate through VideoInfo.from_sample (keyframes, frames)
        meta.setdefault("native_fps", native_fps)
        conv = [type(t)(t.role, t.value) for t in item.conversation]  # copies: samples may be edited downstream
        return Sample(frames, list(timestamps), conv, kind, item.id, str(path), meta)

    def _decode_images(self, item: Item, path: Path) -> Sample:
        """A multi-image item (``meta["images"]``) -> a ``kind="images"`` sample: the images stacked as
        frames at positions ``0, 1, ...`` (see :mod:`dynvlm.data.images`)."""
        frames = stack_images([image_array(src, self.root) for src in item.meta["images"]])
        meta = {k: v for k, v in item.meta.items() if k != "images"}  # image bytes stay out of the sample
        meta["duration"] = 0.0
        conv = [type(t)(t.role, t.value) for t in item.conversation]
        return Sample(frames, [float(i) for i in range(len(frames))], conv, IMAGES_KIND, item.id, str(path), meta)

    def __getitem__(self, index: int) -> Loaded:
        skipped: list[tuple[str, str]] = []
        tries = min(len(self.items), MAX_SUBSTITUTES + 1) if self.substitute else 1
        for k in range(tries):
            j = (index + k) % len(self.items)
            try:
                return Loaded(self.decode(self.items[j], j), skipped)
            except VideoReadError as exc:
                if self.on_error == "raise":
                    raise
                skipped.append((exc.path, exc.reason))
        return Loaded(None, skipped)


def collate(loaded: list[Loaded | Sample]) -> DataBatch:
    """Samples (or :class:`Loaded`) -> :class:`DataBatch`; frames keep their own ``T`` (no padding)."""
    samples, skipped = [], []
    for x in loaded:
        if isinstance(x, Sample):
            samples.append(x)
            continue
        skipped.extend(x.skipped)
        if x.sample is not None:
            samples.append(x.sample)
    return DataBatch(samples=samples, skipped=skipped)
