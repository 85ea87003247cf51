"""dynvlm.data.VideoDataModule: synthetic data from config, real decoding, workers, skip/raise, Lightning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from dynvlm.data import DataBatch, VideoDataModule
from dynvlm.data.annotations import MC_INSTRUCTION, AnnotationError
from dynvlm.data.questions import DEFAULT_QTYPES
from dynvlm.data.video import VideoReadError
from dynvlm.records import Batch, Sample
from dynvlm.schema import BudgetConfig, DataConfig

SYNTH = dict(seed=0, train=6, val=2, test=2, size=16, min_duration=12, max_duration=16, max_visits=2, max_visit_seconds=3)
BUDGET = {"fps": 1.0, "max_frames": 8}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dm") / "synth"
    dm = VideoDataModule({"synth": {"out": str(out), **SYNTH}, "batch_size": 4}, BUDGET)
    dm.prepare_data()
    return out


def _ids(loader) -> list[str]:
    return [s.id for b in loader for s in b.samples]


def test_training_batches_follow_the_contract(synth_dir):
    dm = VideoDataModule(DataConfig(synth={"out": str(synth_dir), **SYNTH}, batch_size=4, shuffle=False), BudgetConfig(**BUDGET))
    dm.prepare_data()  # already there: nothing regenerated
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert [len(b) for b in batches] == [4, 2]
    lengths = set()
    for b in batches:
        assert isinstance(b, Batch) and isinstance(b, DataBatch) and b.skipped == []
        for s in b.samples:
            assert isinstance(s, Sample) and s.kind == "video"
            assert s.frames.dtype == torch.uint8 and s.frames.shape[1:] == (16, 16, 3)
            assert s.frames.shape[0] == len(s.timestamps) <= 8
            # more seconds than max_frames: 8 frames by truncated linspace over 1-fps candidates
            assert s.timestamps[0] == 0.0 and s.timestamps[-1] == s.meta["duration"] - 1
            lengths.add(s.meta["duration"])
            human = [t for t in s.conversation if t.role == "human"]
            assert sum(t.value.count("<video>") for t in s.conversation) == 1 and human[0].value.startswith("<video>\n")
            assert [t.role for t in s.conversation] == ["human", "gpt"] * len(DEFAULT_QTYPES)  # all questions of the video
            assert Path(s.source).is_file() and len(s.meta["questions"]) == len(DEFAULT_QTYPES)
    assert len(lengths) > 1  # videos keep their own length


def test_mc_eval_samples_and_workers(synth_dir):
    cfg = OmegaConf.create({"synth": {"out": str(synth_dir), **SYNTH}, "batch_size": 4, "eval_batch_size": 5})
    dm = VideoDataModule(cfg, OmegaConf.create(BUDGET))  # DictConfig sections work too
    dm.setup("test")
    assert dm.is_mc["test"]
    batches = list(dm.test_dataloader())
    n = 2 * len(DEFAULT_QTYPES)  # 2 videos x one question per type, in file order
    assert [len(b) for b in batches] == [5] * (n // 5) + [n % 5] * (n % 5 > 0)
    s = batches[0].samples[0]
    rec = json.loads((synth_dir / "test_mc.jsonl").read_text().splitlines()[0])
    letters = "ABCD"
    assert [t.role for t in s.conversation] == ["human", "gpt"]
    assert s.conversation[0].value == "<video>\n" + rec["question"] + "".join(
        f"\n{letters[i]}. {o}" for i, o in enumerate(rec["options"])) + "\n" + MC_INSTRUCTION
    assert s.conversation[1].value == rec["answer"]
    assert s.meta["options"] == rec["options"] and s.meta["answer"] == letters.index(rec["answer"])
    assert s.meta["category"] == rec["category"] and s.meta["question_id"] == rec["question_id"] == s.id
    assert s.meta["evidence_times"] == rec["evidence_times"]
    serial = _ids(dm.test_dataloader())
    dm2 = VideoDataModule({"synth": {"out": str(synth_dir), **SYNTH}, "eval_batch_size": 5, "num_workers": 2}, BUDGET)
    dm2.setup("test")
    assert _ids(dm2.test_dataloader()) == serial
    frames = [s.frames for b in dm2.test_dataloader() for s in b.samples]
    assert all(torch.equal(a, b) for a, b in zip(frames, [s.frames for b in batches for s in b.samples]))


def _broken_set(tmp_path: Path, synth_dir: Path) -> Path:
    """A training file: 3 good videos, a missing one, a corrupt one, an unreadable line."""
    recs = [json.loads(line) for line in (synth_dir / "train.jsonl").read_text().splitlines()][:3]
    for r in recs:
        r["video"] = str(synth_dir / r["video"])
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 300)
    bad = [dict(recs[0], id="gone", video=str(tmp_path / "gone.mp4")), dict(recs[1], id="corrupt", video="corrupt.mp4")]
    lines = [json.dumps(r) for r in [recs[0], bad[0], recs[1], bad[1], recs[2]]]
    lines.insert(2, '{"id": "cut", "video": "x.mp4", "conversations": [')
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_goes_on_and_reports_by_name(tmp_path, synth_dir, workers, caplog):
    path = _broken_set(tmp_path, synth_dir)
    dm = VideoDataModule({"train": str(path), "batch_size": 2, "num_workers": workers, "on_error": "skip"}, BUDGET)
    dm.setup("fit")
    ids = [s.id for epoch in range(2) for b in dm.train_dataloader() for s in b.samples]
    # the corrupt item is replaced by the next readable one: batches keep their size
    assert len(ids) == 2 * 4 and set(ids) <= {"train_000000", "train_000001", "train_000002"}
    files = {k.file: k for k in dm.skipped}
    assert set(files) == {f"{path}:3", str(tmp_path / "gone.mp4"), str(tmp_path / "corrupt.mp4")}
    assert "not valid JSON" in files[f"{path}:3"].reason and "no such file" in files[str(tmp_path / "gone.mp4")].reason
    assert dm.skip_events == 2 + 2  # line + missing at setup, corrupt once per epoch
    summary = dm.skip_summary()
    assert summary.startswith("skipped 3 files (train 3; 4 times)") and "corrupt.mp4" in summary
    with caplog.at_level("WARNING"):
        dm.teardown("fit")
    assert "corrupt.mp4" in caplog.text


def test_raise_names_the_file(tmp_path, synth_dir):
    path = _broken_set(tmp_path, synth_dir)
    with pytest.raises(AnnotationError, match=rf"{path}:3"):
        VideoDataModule({"train": str(path), "on_error": "raise"}, BUDGET).setup("fit")
    lines = path.read_text().splitlines()
    del lines[2]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(VideoReadError, match="gone.mp4"):
        VideoDataModule({"train": str(path), "on_error": "raise"}, BUDGET).setup("fit")
    del lines[1]
    path.write_text("\n".join(lines) + "\n")
    dm = VideoDataModule({"train": str(path), "on_error": "raise", "batch_size": 4, "shuffle": False}, BUDGET)
    dm.setup("fit")
    with pytest.raises(VideoReadError, match="corrupt.mp4"):
        list(dm.train_dataloader())


def test_eval_drops_a_broken_video_without_substituting(tmp_path, synth_dir):
    recs = [json.loads(line) for line in (synth_dir / "test_mc.jsonl").read_text().splitlines()]
    broken_video = tmp_path / "videos" / "broken.mp4"
    broken_video.parent.mkdir()
    broken_video.write_bytes(b"garbage" * 50)
    for r in recs:
        shutil.copy(synth_dir / r["video"], tmp_path / "videos") if not (tmp_path / "videos" / Path(r["video"]).name).exists() else None
        r["video"] = "videos/" + Path(r["video"]).name
    recs[1]["video"] = "videos/broken.mp4"
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    dm = VideoDataModule({"test": str(tmp_path / "mc.jsonl"), "eval_batch_size": 4}, BUDGET)
    ids = _ids(dm.test_dataloader())
    assert ids == [r["question_id"] for i, r in enumerate(recs) if i != 1]
    assert [k.file for k in dm.skipped] == [str(broken_video)] and dm.skipped[0].split == "test"


def test_synthetic_data_is_generated_on_first_use_outside_a_trainer(tmp_path):
    out = tmp_path / "fresh"
    dm = VideoDataModule({"synth": {"out": str(out), **dict(SYNTH, train=2, val=0, test=1)}, "eval_batch_size": 6}, BUDGET)
    batch = next(iter(dm.test_dataloader()))  # no prepare_data / setup call
    assert len(batch) == 6 and (out / "manifest.json").is_file()
    assert dm.source("val") is None and dm.val_dataloader() == []  # an empty split is no data: no validation


def test_images_root_and_max_samples(tmp_path, synth_dir):
    from PIL import Image

    media = tmp_path / "media"
    (media / "v").mkdir(parents=True)
    Image.fromarray(np.full((9, 13, 3), 200, np.uint8)).save(media / "still.png")
    shutil.copy(synth_dir / "videos" / "train" / "train_000000.mp4", media / "v" / "clip.mp4")
    recs = [
        {"id": "img", "image": "still.png", "conversations": [{"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "grey"}]},
        {"id": "vid", "video": "v/clip.mp4", "conversations": [{"from": "human", "value": "<video>\nHi"}, {"from": "gpt", "value": "yo"}]},
        {"id": "cut", "video": "v/clip.mp4", "conversations": [{"from": "human", "value": "<video>\nHi"}, {"from": "gpt", "value": "yo"}]},
    ]
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "train.json").write_text(json.dumps(recs))
    dm = VideoDataModule({"train": str(tmp_path / "ann" / "train.json"), "root": str(media), "max_samples": 2, "shuffle": False}, BUDGET)
    (batch,) = list(dm.train_dataloader())
    img, vid = batch.samples
    assert (img.kind, tuple(img.frames.shape), img.timestamps) == ("image", (1, 9, 13, 3), [0.0])
    assert img.conversation[0].value == "<image>\nColour?" and int(img.frames.float().mean()) == 200
    assert vid.kind == "video" and vid.frames.shape[0] == 8 and vid.source == str(media / "v" / "clip.mp4")


def test_bad_sections_are_named():
    with pytest.raises(ValueError, match="data: unknown key 'trian'; valid keys: backend, batch_size, benchmark, cache, .*test, train, val$"):
        VideoDataModule({"trian": "x.jsonl"}, BUDGET)
    with pytest.raises(ValueError, match="no train data: set data.train"):
        VideoDataModule({}, BUDGET).train_dataloader()
    with pytest.raises(ValueError, match="data.synth needs 'out'"):
        VideoDataModule({"synth": {"seed": 1}}, BUDGET).prepare_data()


class _Probe(pl.LightningModule):
    """A real (tiny) LightningModule: mean pixel per video -> linear -> fit the answer count."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)
        self.seen: list[int] = []
        self.val_seen = 0

    def _x(self, batch: Batch) -> torch.Tensor:
        return torch.stack([s.frames.float().mean() / 255 for s in batch.samples])[:, None]

    def training_step(self, batch: Batch, idx: int) -> torch.Tensor:
        assert isinstance(batch, Batch)
        self.seen.append(len(batch))
        return self.lin(self._x(batch)).pow(2).mean()

    def validation_step(self, batch: Batch, idx: int) -> None:
        self.val_seen += sum(1 for s in batch.samples if s.meta.get("options"))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_real_lightning_fit_and_validate(synth_dir):
    dm = VideoDataModule({"synth": {"out": str(synth_dir), **SYNTH}, "batch_size": 3, "eval_batch_size": 6}, BUDGET)
    model = _Probe()
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1)
    trainer.fit(model, datamodule=dm)
    assert model.seen == [3, 3, 3] and model.val_seen == 6


def test_cache_keeps_decoded_frames(tmp_path, synth_dir):
    copy = tmp_path / "synth"
    shutil.copytree(synth_dir, copy)
    data = {"synth": {"out": str(copy), **SYNTH}, "batch_size": 4, "shuffle": False}
    cached = VideoDataModule(data, BUDGET)  # cache defaults to on for synthetic data
    plain = VideoDataModule({**data, "cache": False}, BUDGET)
    cached.setup("fit")
    plain.setup("fit")
    first = [s.frames for b in cached.train_dataloader() for s in b.samples]
    assert len(list(plain.train_dataloader())) == 2
    shutil.rmtree(copy / "videos")  # from now on only the cache can serve frames
    again = [s.frames for b in cached.train_dataloader() for s in b.samples]
    assert len(again) == 6 and all(torch.equal(a, b) for a, b in zip(first, again)) and cached.skipped == []
    assert sum(len(b) for b in plain.train_dataloader()) == 0 and len(plain.skipped) == 6


def test_lightning_can_inject_a_distributed_sampler(synth_dir):
    # what Lightning does to every training loader under DDP: rebuild it around a DistributedSampler
    from lightning_fabric.utilities.data import _replace_dunder_methods, _update_dataloader
    from torch.utils.data import DataLoader, DistributedSampler

    with _replace_dunder_methods(DataLoader, "dataset"):
        dm = VideoDataModule({"synth": {"out": str(synth_dir), **SYNTH}, "batch_size": 2}, BUDGET)
        loader = dm.train_dataloader()
    ranks = []
    for rank in (0, 1):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=False)
        rebuilt = _update_dataloader(loader, sampler)
        assert type(rebuilt) is type(loader) and rebuilt.split == "train"
        ranks.append(_ids(rebuilt))
    assert sorted(ranks[0] + ranks[1]) == [f"train_{i:06d}" for i in range(6)] and not set(ranks[0]) & set(ranks[1])
