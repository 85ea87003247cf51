"""Microbenchmarks of the data side (skipped unless run with ``--benchmark-only``):

    .venv/bin/python -m pytest tests/benchmarks/test_bench_data.py --benchmark-only

Numbers for docs/benchmarks.md come from ``dynvlm bench data``; these track regressions.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dynvlm.data import VideoDataModule, synth
from dynvlm.data.video import read_video

KW = {"seed": 0, "train": 8, "val": 0, "test": 0}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return synth.generate({"out": str(tmp_path_factory.mktemp("bench") / "synth"), **KW}, progress=False)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_decode_sampled_frames(benchmark, folder, backend):
    clips = sorted((folder / "videos" / "train").glob("*.mp4"))
    frames = benchmark(lambda: sum(read_video(c, fps=1.0, max_frames=32, backend=backend).frames.shape[0] for c in clips))
    assert frames == sum(min(32, d) for d in (read_video(c, fps=1.0, max_frames=None).frames.shape[0] for c in clips))


def test_datamodule_epoch_uncached(benchmark, folder):
    dm = VideoDataModule({"synth": {"out": str(folder), **KW}, "batch_size": 4, "cache": False}, {"fps": 1.0, "max_frames": 32})
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert benchmark(lambda: sum(len(b) for b in loader)) == 8
