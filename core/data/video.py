"""Reading videos and images into uint8 frames with their timestamps.

One entry point, :func:`read_video`: a path in, a :class:`Clip` out (uint8 ``[T, H, W, 3]``
frames plus the ``T`` stream timestamps in seconds). Frames are sampled at ``fps`` (default
1 per second) on the stream's own timestamps, then capped at ``max_frames`` by uniform
sampling with truncated ``linspace`` indices (what the common evaluation harnesses do).
PNG/JPEG/... images come back as one frame at time 0.

Backends implement :class:`VideoBackend`. ``decord`` is the default; it is imported lazily (so
a process that never reads a video never loads it) and a reader is opened per call, so a
DataLoader worker opens its own. ``pyav`` is the fallback when decord is missing or fails on a
file. Every failure is a :class:`VideoReadError` naming the file.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from dynvlm.budget import uniform_indices

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# a frame is "shown at" time t when its timestamp is <= t; the slack absorbs float rounding of pts * time_base
_EPS = 1e-6

__all__ = [
    "BACKENDS",
    "Clip",
    "IMAGE_SUFFIXES",
    "VideoBackend",
    "VideoReadError",
    "read_image",
    "read_video",
    "sample_indices",
    "sample_times",
]


class VideoReadError(RuntimeError):
    """A video or image could not be read; ``path`` names the file, the message says why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read {self.path!r}: {reason}")


@dataclass
class Clip:
    """Decoded frames of one file.

    Attributes:
        frames: uint8 ``[T, H, W, 3]`` RGB.
        timestamps: ``T`` increasing presentation times in seconds, relative to the first frame.
        duration: seconds from the first frame to the end of the last one (``0.0`` for images).
        native_fps: the stream's average frame rate (``0.0`` for images).
        backend: which backend decoded it (``"decord"``, ``"pyav"`` or ``"image"``).
        notes: why an earlier backend was passed over, if one was.
    """

    frames: np.ndarray
    timestamps: list[float]
    duration: float
    native_fps: float
    backend: str
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------
# sampling (pure functions: shared with the synthetic generator's accuracy ceilings)


def sample_indices(frame_times: np.ndarray | list[float], fps: float | None = 1.0, max_frames: int | None = None) -> list[int]:
    """Pick frames to decode from all frame timestamps of a stream.

    Args:
        frame_times: ``[N]`` increasing presentation times in seconds (first frame at 0).
        fps: sampling rate; target times are ``0, 1/fps, 2/fps, ...`` up to the last frame, and each
            picks the frame on screen at that time (the last one with timestamp <= target).
            ``None`` or ``<= 0`` keeps every frame.
        max_frames: cap on the number of frames; above it, ``np.linspace(0, n - 1, max_frames)``
            truncated to int picks among the fps-sampled frames.

    Returns:
        Increasing, distinct indices into ``frame_times`` (empty only when ``frame_times`` is).
    """
    times = np.asarray(frame_times, dtype=np.float64)
    n = len(times)
    if n == 0:
        return []
    if fps is None or fps <= 0:
        picked = list(range(n))
    else:
        last = times[-1]
        targets = np.arange(0, math.floor(last * fps + _EPS) + 1) / fps
        idx = np.searchsorted(times, targets + _EPS, side="right") - 1
        picked = sorted(set(int(i) for i in np.clip(idx, 0, n - 1)))
    if max_frames is not None and max_frames > 0 and len(picked) > max_frames:
        # truncating linspace, as lmms-eval / LLaVA-NeXT do: first and last are always kept
        picked = [picked[i] for i in uniform_indices(len(picked), max_frames)]
    return picked


def sample_times(duration: float, native_fps: float, fps: float | None = 1.0, max_frames: int | None = None) -> list[float]:
    """Timestamps :func:`read_video` returns for a constant-rate video of ``duration`` seconds.

    The frames of such a video sit at ``k / native_fps`` for ``k < round(duration * native_fps)``.
    Used to compute, without decoding, which seconds a budget's frames can see.
    """
    n = int(round(duration * native_fps))
    times = np.arange(n) / native_fps
    return [float(times[i]) for i in sample_indices(times, fps, max_frames)]


# ------------------------------------------------------------------------------------------
# backends


class VideoBackend(Protocol):
    """Decodes the frames :func:`sample_indices` picks; raises :class:`VideoReadError`."""

    name: str

    def available(self) -> bool:
        """Whether the backend's library can be imported here."""
        ...

    def read(self, path: Path, fps: float | None, max_frames: int | None) -> Clip:
        """``path`` -> :class:`Clip` with uint8 ``[T, H, W, 3]`` frames."""
        ...


class DecordBackend:
    """decord: random access by index, timestamps from its frame index (no decoding needed)."""

    name = "decord"

    def available(self) -> bool:
        try:
            import decord  # noqa: F401
        except Exception:  # noqa: BLE001 - a broken install counts as missing
            return False
        return True

    def read(self, path: Path, fps: float | None, max_frames: int | None) -> Clip:
        import decord

        try:
            vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        except Exception as exc:  # noqa: BLE001 - decord raises RuntimeError or DECORDError
            raise VideoReadError(path, f"decord cannot open it ({_first_line(exc)})") from None
        n = len(vr)
        if n == 0:
            raise VideoReadError(path, "the video stream has no frames")
        try:
            spans = np.asarray(vr.get_frame_timestamp(list(range(n))), dtype=np.float64).reshape(n, 2)
            start = spans[0, 0]
            times = spans[:, 0] - start
            idx = sample_indices(times, fps, max_frames)
            frames = vr.get_batch(idx).asnumpy()
        except Exception as exc:  # noqa: BLE001
            raise VideoReadError(path, f"decord failed while decoding ({_first_line(exc)})") from None
        duration = float(spans[-1, 1] - start)
        return Clip(_check_frames(path, frames), [float(times[i]) for i in idx], duration, float(vr.get_avg_fps()), self.name)


class PyAVBackend:
    """PyAV: timestamps from demuxed packets (cheap), then one sequential decode keeping picked frames."""

    name = "pyav"

    def available(self) -> bool:
        try:
            import av  # noqa: F401
        except Exception:  # noqa: BLE001
            return False
        return True

    def read(self, path: Path, fps: float | None, max_frames: int | None) -> Clip:
        import av

        try:
            # Pass 1: presentation times from packets, without decoding (cheap).
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise VideoReadError(path, "the file has no video stream")
                stream = container.streams.video[0]
                rate = float(stream.average_rate or stream.guessed_rate or 0)
                tb = float(stream.time_base or 0)
                packets = [(p.pts, p.size) for p in container.demux(stream)]
            if not any(size for _, size in packets):
                raise VideoReadError(path, "the video stream has no frames")
            pts = sorted(p for p, size in packets if p is not None and size)
            # Pass 2 reopens rather than seeks: raw streams (.h264) cannot seek.
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                if pts and tb and len(pts) == sum(1 for _, size in packets if size):
                    frames, times, duration = self._decode_picked(container, stream, pts, tb, rate, fps, max_frames)
                else:
                    frames, times, duration = self._decode_all(container, stream, rate, fps, max_frames)
        except VideoReadError:
            raise
        except Exception as exc:  # noqa: BLE001 - FileNotFoundError, InvalidDataError, EOFError, ...
            raise VideoReadError(path, f"PyAV cannot decode it ({_first_line(exc)})") from None
        if not frames:
            raise VideoReadError(path, "the video stream has no decodable frames")
        return Clip(_check_frames(path, np.stack(frames)), times, duration, rate, self.name)

    @staticmethod
    def _decode_picked(container, stream, pts, tb, rate, fps, max_frames) -> tuple[list[np.ndarray], list[float], float]:
        to_rgb = _rgb_converter()
        times = np.array([(p - pts[0]) * tb for p in pts])
        wanted = {pts[i]: float(times[i]) for i in sample_indices(times, fps, max_frames)}
        kept: dict[int, np.ndarray] = {}
        for frame in container.decode(stream):
            if frame.pts in wanted:
                kept[frame.pts] = to_rgb(frame)
                if len(kept) == len(wanted):
                    break  # everything picked is in: skip decoding the rest
        step = times[-1] - times[-2] if len(times) > 1 else (1.0 / rate if rate else 0.0)
        order = sorted(kept)
        return [kept[p] for p in order], [wanted[p] for p in order], float(times[-1] + step)

    @staticmethod
    def _decode_all(container, stream, rate, fps, max_frames) -> tuple[list[np.ndarray], list[float], float]:
        # No usable packet timestamps (raw streams): decode everything, time from frames or their index.
        to_rgb = _rgb_converter()
        frames, ftimes = [], []
        for frame in container.decode(stream):
            frames.append(to_rgb(frame))
            ftimes.append(float(frame.time) if frame.time is not None else float("nan"))
        if not frames:
            return [], [], 0.0
        rate = rate or 1.0
        t = np.array(ftimes)
        if np.isnan(t).any() or np.any(np.diff(t) <= 0):
            t = np.arange(len(t)) / rate
        t = t - t[0]
        idx = sample_indices(t, fps, max_frames)
        return [frames[i] for i in idx], [float(t[i]) for i in idx], float(t[-1] + 1.0 / rate)


BACKENDS: dict[str, VideoBackend] = {"decord": DecordBackend(), "pyav": PyAVBackend()}


# ------------------------------------------------------------------------------------------
# entry points


def read_image(path: str | Path) -> Clip:
    """An image file -> :class:`Clip` with one uint8 ``[1, H, W, 3]`` frame at time 0."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise VideoReadError(path, "no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise VideoReadError(path, f"not a readable image ({_first_line(exc)})") from None
    return Clip(_check_frames(path, arr[None]), [0.0], 0.0, 0.0, "image")


def read_video(
    path: str | Path,
    fps: float | None = 1.0,
    max_frames: int | None = 128,
    backend: str = "auto",
) -> Clip:
    """Decode ``path`` into sampled frames.

    Args:
        path: a video file (anything FFmpeg reads) or an image (:data:`IMAGE_SUFFIXES`).
        fps: frames per second to sample (see :func:`sample_indices`); ``None`` keeps every frame.
        max_frames: cap on ``T`` by uniform sampling; ``None`` for no cap.
        backend: ``"auto"`` (decord, then PyAV if decord is missing or fails), ``"decord"`` or ``"pyav"``.

    Returns:
        :class:`Clip` with uint8 ``[T, H, W, 3]`` frames, ``1 <= T <= max_frames``.

    Raises:
        VideoReadError: naming the file (missing, empty, truncated, no frames, not a video).
        ValueError: for an unknown ``backend``.
    """
    path = Path(path)
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown video backend {backend!r}; valid: auto, {', '.join(BACKENDS)}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image(path)
    if not path.exists():
        raise VideoReadError(path, "no such file")
    if path.is_dir():
        raise VideoReadError(path, "it is a directory, not a file")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "the file is empty (0 bytes)")
    order = [backend] if backend != "auto" else list(BACKENDS)
    notes: list[str] = []
    for name in order:
        impl = BACKENDS[name]
        if not impl.available():
            notes.append(f"{name} is not installed")
            continue
        try:
            clip = impl.read(path, fps, max_frames)
        except VideoReadError as exc:
            notes.append(exc.reason)
            continue
        clip.notes = notes
        if notes:
            log.debug("read %s with %s after: %s", path, name, "; ".join(notes))
        return clip
    raise VideoReadError(path, "; ".join(notes) or "no backend available")


def _rgb_converter():
    """``frame -> uint8 [H, W, 3]`` reusing one swscale context: ``frame.to_ndarray(format=...)``
    builds a new one per call, which is 10x slower than decoding on small frames."""
    try:
        from av.video.reformatter import VideoReformatter
    except ImportError:  # older PyAV
        return lambda frame: frame.to_ndarray(format="rgb24")
    reformatter = VideoReformatter()
    return lambda frame: reformatter.reformat(frame, format="rgb24").to_ndarray()


def _check_frames(path: Path, frames: np.ndarray) -> np.ndarray:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise VideoReadError(path, f"decoded frames have shape {tuple(frames.shape)}, expected [T, H, W, 3]")
    return np.ascontiguousarray(frames, dtype=np.uint8)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
