"""``dynvlm bench data``: decode throughput of decord vs PyAV, and DataModule samples/s.

Generates (or reuses) a synthetic folder, then measures on its training clips:

- **decode**: frames/s returned by :func:`dynvlm.data.video.read_video` per backend, for every frame
  of each clip and for the 1-fps sampling the DataModule uses;
- **loading**: training samples/s of :class:`~dynvlm.data.VideoDataModule` with 0 and 2
  workers (steady state: the second epoch, workers already up).

Prints a markdown table (and writes it with ``--markdown FILE``).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any


def _clips(folder: Path) -> list[Path]:
    return sorted((folder / "videos" / "train").glob("*.mp4"))


def bench_decode(clips: list[Path], backend: str, fps: float | None, max_frames: int | None, repeat: int) -> dict[str, float]:
    """Best of ``repeat`` passes over ``clips``: ``{"frames_per_s", "clips_per_s", "frames"}``."""
    from dynvlm.data.video import read_video

    best = float("inf")
    frames = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        frames = sum(read_video(c, fps=fps, max_frames=max_frames, backend=backend).frames.shape[0] for c in clips)
        best = min(best, time.perf_counter() - t0)
    return {"frames_per_s": frames / best, "clips_per_s": len(clips) / best, "frames": frames}


def bench_loader(folder: Path, synth_kwargs: dict[str, Any], workers: int, batch_size: int, max_frames: int,
                 cache: bool = False) -> dict[str, float]:
    """Training samples/s of the DataModule over its second epoch (and the first, start-up included)."""
    from dynvlm.data.datamodule import VideoDataModule

    dm = VideoDataModule(
        {"synth": {"out": str(folder), **synth_kwargs}, "batch_size": batch_size, "num_workers": workers, "cache": cache},
        {"fps": 1.0, "max_frames": max_frames},
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    rates = []
    for _ in range(2):
        t0 = time.perf_counter()
        n = sum(len(b) for b in loader)
        rates.append(n / (time.perf_counter() - t0))
    return {"first_epoch": rates[0], "samples_per_s": rates[1], "samples": n}


def main(argv: list[str] | None = None) -> int:
    """``dynvlm bench data [--videos N] [--size PX] [--dir DIR] [--markdown FILE]``; returns 0."""
    p = argparse.ArgumentParser(prog="dynvlm bench data", description=__doc__.splitlines()[0])
    p.add_argument("--dir", help="synthetic folder to use/create (default: a temporary one)")
    p.add_argument("--videos", type=int, default=64, help="training clips to generate and read")
    p.add_argument("--size", type=int, default=32, help="frame side in px")
    p.add_argument("--repeat", type=int, default=3, help="decode passes (best is reported)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-frames", type=int, default=32)
    p.add_argument("--workers", default="0,2", help="comma-separated DataModule worker counts")
    p.add_argument("--markdown", help="also write the table to this file")
    args = p.parse_args(argv)

    from dynvlm.data import synth

    kwargs = {"seed": 0, "train": args.videos, "val": 0, "test": 0, "size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.dir) if args.dir else Path(tmp) / "synth"
        synth.generate({"out": str(folder), **kwargs})
        clips = _clips(folder)
        rows = []
        for backend in ("decord", "pyav"):
            every = bench_decode(clips, backend, None, None, args.repeat)
            sampled = bench_decode(clips, backend, 1.0, args.max_frames, args.repeat)
            rows.append(f"| decode, {backend} | {every['frames_per_s']:,.0f} frames/s (all frames) | "
                        f"{sampled['frames_per_s']:,.0f} frames/s, {sampled['clips_per_s']:,.1f} clips/s (1 fps, <= {args.max_frames}) |")
        for cache in (False, True):
            for w in (int(x) for x in args.workers.split(",")):
                r = bench_loader(folder, kwargs, w, args.batch_size, args.max_frames, cache)
                rows.append(f"| DataModule, {w} workers, cache {'on' if cache else 'off'} | {r['samples_per_s']:,.1f} samples/s "
                            f"(2nd epoch) | {r['first_epoch']:,.1f} samples/s (1st epoch, start-up included) |")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    dur = f"{synth.SynthConfig(out='').min_duration}-{synth.SynthConfig(out='').max_duration}"
    header = [
        f"{len(clips)} synthetic clips, {args.size}x{args.size} px, {dur} s at 4 fps (H.264/MP4), batch {args.batch_size}; {machine}",
        "",
        "| what | throughput | sampled / first epoch |",
        "|---|---|---|",
    ]
    text = "\n".join(header + rows) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
