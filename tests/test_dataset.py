"""dynvlm.data.dataset.VideoQADataset: what a decoded sample carries for budget policies."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from dynvlm.budget import VideoInfo
from dynvlm.data.annotations import Item
from dynvlm.data.dataset import VideoQADataset
from dynvlm.records import Turn


def _write_video(path: Path, seconds: int, fps: int) -> None:
    """An H.264 MP4 of ``seconds * fps`` 16x16 frames at ``fps`` frames per second."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width = s.height = 16
        s.pix_fmt = "yuv420p"
        for i in range(seconds * fps):
            img = np.full((16, 16, 3), (i * 7) % 256, dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _item(media: str, **meta) -> Item:
    return Item("a", media, "video", [Turn("human", "<video>\nq?"), Turn("gpt", "a")], dict(meta))


def test_native_fps_reaches_the_policy(tmp_path):
    _write_video(tmp_path / "v.mp4", seconds=4, fps=6)
    for cache in (False, True):
        ds = VideoQADataset([_item("v.mp4")], tmp_path, fps=1.0, max_frames=8, cache=cache)
        for _ in range(2):  # the second decode is served by the frame cache when it is on
            sample = ds[0].sample
            assert sample is not None and sample.meta["native_fps"] == 6.0
            info = VideoInfo.from_sample(sample)
            assert info.fps == 6.0 and info.duration is not None and abs(info.duration - 4.0) < 0.5


def test_annotated_native_fps_wins(tmp_path):
    _write_video(tmp_path / "v.mp4", seconds=2, fps=5)
    ds = VideoQADataset([_item("v.mp4", native_fps=30.0)], tmp_path, fps=1.0, max_frames=8)
    sample = ds[0].sample
    assert sample is not None and VideoInfo.from_sample(sample).fps == 30.0


def test_benchmark_durations_never_replace_the_clips(tmp_path):
    """VideoMME's `duration` is a label ("short": float() of it crashed the budget) and MLVU's is the
    source video's length (183.5 s for an 8 s clip): the decoded clip's length plans the budget."""
    import json

    from dynvlm.data.items import read_items

    _write_video(tmp_path / "clip.mp4", seconds=8, fps=2)
    records = {
        "videomme": {"videoID": "clip", "question_id": "q1", "question": "What?", "options": ["A. x", "B. y", "C. z", "D. w"],
                     "answer": "A", "duration": "short", "domain": "Knowledge", "sub_category": "Astronomy",
                     "task_type": "Counting Problem"},
        "mlvu": {"video_name": "clip.mp4", "question": "What?\n(A) x\n(B) y", "answer": "B", "task_type": "count",
                 "duration": 183.5},
    }
    for name, rec in records.items():
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(rec) + "\n")
        items, _, _ = read_items(tmp_path / f"{name}.jsonl")
        sample = VideoQADataset(items, tmp_path, fps=1.0, max_frames=8)[0].sample
        assert sample is not None and items[0].meta["benchmark"] == name
        info = VideoInfo.from_sample(sample)  # raised "could not convert string to float: 'short'"
        assert info.duration is not None and abs(info.duration - 8.0) < 0.6, (name, info.duration)
    assert sample.meta["source_duration"] == 183.5


def test_multi_image_items_keep_every_image(tmp_path):
    """MuirBench-shaped record: the images (two sizes) become one kind="images" sample, the prompt holds one
    <image> per image, and the budget keeps every image, however many N_max allows per image."""
    import json

    from PIL import Image

    from dynvlm.budget import BudgetPolicy
    from dynvlm.data.items import read_items

    for i, size in enumerate([(20, 16), (12, 30), (8, 8)]):
        Image.new("RGB", size, (40 * i, 90, 200)).save(tmp_path / f"i{i}.png")
    rec = {"idx": "m1", "task": "Counting", "image_relation": "Similar", "image_type": "Photo", "question": "How many?",
           "options": ["one", "two", "three"], "answer": "C", "image_list": ["i0.png", "i1.png", "i2.png"]}
    (tmp_path / "muir.jsonl").write_text(json.dumps(rec) + "\n")
    (item,), _, _ = read_items(tmp_path / "muir.jsonl")
    assert item.kind == "images" and item.conversation[0].value.startswith("<image>\n<image>\n<image>\nHow many?\nA. one")
    sample = VideoQADataset([item], tmp_path)[0].sample
    assert sample is not None and sample.kind == "images" and tuple(sample.frames.shape) == (3, 16, 20, 3)
    budget = BudgetPolicy({"max_tokens": 10, "max_frames": 2, "min_tokens_per_frame": 4}, (4, 4))
    plan = budget.plan_images(3)
    assert plan.indices == (0, 1, 2) and plan.tokens == 3  # max_frames and m_min would have dropped an image
    with pytest.raises(ValueError, match="11 images need at least 11 visual tokens, more than budget.max_tokens=10"):
        budget.plan_images(11)
