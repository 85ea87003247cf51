"""dynvlm.data.synth: real files, answers checked against the decoded frames, balance, no leaks."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dynvlm.data import synth
from dynvlm.data.items import read_items
from dynvlm.data.video import read_video

SMALL = dict(seed=3, train=8, val=3, test=6, min_duration=14, max_duration=18, max_visits=3, max_visit_seconds=4)


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return synth.generate({"out": str(tmp_path_factory.mktemp("synth")), **SMALL}, progress=False)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    kw = dict(SMALL, train=2, val=1, test=1)
    a = synth.generate({"out": str(tmp_path / "a"), **kw}, progress=False)
    b = synth.generate({"out": str(tmp_path / "b"), **kw, "workers": 2}, progress=False)
    c = synth.generate({"out": str(tmp_path / "c"), **kw, "seed": 4}, progress=False)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db and len(da) == 2 + 1 + 1 + 1 + 5  # videos, manifest, 3 llava + 2 mc files
    assert da["train.jsonl"] != dc["train.jsonl"]
    assert da["videos/train/train_000000.mp4"] != dc["videos/train/train_000000.mp4"]


# ------------------------------------------------------------------------------------------
# answers against pixels


def _nearest_colour(rgb: np.ndarray) -> str:
    names = list(synth.COLOURS)
    d = [np.abs(rgb - np.array(synth.COLOURS[n])).sum() for n in names]
    return names[int(np.argmin(d))]


def _balls_per_second(frames: np.ndarray, size: int) -> list[str | None]:
    geo = synth.geometry(size)
    out = []
    for f in frames:
        band = f[geo["band_top"] : geo["band_bottom"]].reshape(-1, 3).astype(float)
        lit = band[band.max(1) > 100]
        out.append(_nearest_colour(lit.mean(0)) if len(lit) >= geo["b"] else None)
    return out


def _symbol(frame: np.ndarray, colour: str, size: int) -> tuple[str, str]:
    """(position, shape) of the symbol of ``colour`` read from the pixels."""
    geo = synth.geometry(size)
    f = frame.astype(int)
    target = np.array(synth.COLOURS[colour])
    mask = (np.abs(f - target).sum(-1) < 120) & (f.max(-1) > 100)
    mask[geo["band_top"] : geo["band_bottom"]] = False
    ys, xs = np.nonzero(mask)
    assert len(ys), f"no {colour} symbol drawn"
    cy, cx = ys.mean(), xs.mean()
    position = ("top" if cy < size / 2 else "bottom") + " " + ("left" if cx < size / 2 else "right")
    g = geo["g"]
    y0, x0 = ys.min(), xs.min()
    best, best_iou = "", -1.0
    for shape in synth.SHAPES:
        m = synth.glyph_mask(shape, g)
        oy, ox = np.nonzero(m)  # align the template's top-left lit pixel with the drawn one's
        crop = np.zeros((g, g), bool)
        yy, xx = ys - y0 + oy.min(), xs - x0 + ox.min()
        ok = (yy < g) & (xx < g)
        crop[yy[ok], xx[ok]] = True
        iou = (crop & m).sum() / (crop | m).sum()
        if iou > best_iou:
            best, best_iou = shape, iou
    return position, best


def _check(q: dict, frames: np.ndarray, size: int) -> None:
    balls = _balls_per_second(frames, size)
    answer, text = q["answer_text"], q["question"]
    runs = [c for i, c in enumerate(balls) if c is not None and (i == 0 or balls[i - 1] != c)]
    if q["qtype"] == "colour_at":
        assert balls[int(re.search(r"second (\d+)", text).group(1))] == answer
    elif q["qtype"] == "when":
        colour = re.search(r"the (\w+) ball", text).group(1)
        assert balls.index(colour) == int(answer)
    elif q["qtype"] == "count":
        assert len(runs) == int(answer)
    elif q["qtype"] == "order":
        assert (runs[0] if "first" in text else runs[-1]) == answer
    elif q["qtype"] == "seen":  # the answer's ball is on screen, no wrong option's ball ever is
        assert answer in runs and not (set(q["options"] or ()) - {answer}) & set(runs)
    elif q["qtype"] in ("shape", "where"):
        colour = re.search(r"the (\w+) symbol", text).group(1)
        position, shape = _symbol(frames[0], colour, size)
        assert (shape if q["qtype"] == "shape" else position) == answer
    else:
        raise AssertionError(q["qtype"])
    # the evidence is where the pixels say: a ball question's evidence seconds show a ball
    if not q["needs_detail"]:
        for group in q["evidence_groups"]:
            assert all(balls[t] is not None for t in group)


def test_seen_questions_name_a_ball_and_only_absent_colours_as_wrong_options(tmp_path):
    kw = dict(SMALL, symbols=2, max_visits=2, qtypes=["seen", "shape"], size=16)
    out = synth.generate({"out": str(tmp_path / "seen"), **kw}, progress=False)
    recs = _jsonl(out / "test_mc.jsonl")
    seen = [r for r in recs if r["qtype"] == "seen"]
    assert len(seen) == kw["test"] and {r["category"] for r in seen} == {"presence"}
    scenes = {sc.id: sc for sc in synth.draw_scenes(synth.make_config({"out": str(out), **kw}))["test"]}
    for rec in seen:
        frames = read_video(out / rec["video"], fps=1.0, max_frames=None).frames
        answer = rec["options"]["ABCD".index(rec["answer"])]
        _check(dict(rec, answer_text=answer), frames, 16)  # the answer's ball is on screen, no wrong option's ball
        symbols = {sym.colour for sym in scenes[Path(rec["video"]).stem].symbols}
        assert len(symbols) == 2 and not (set(rec["options"]) - {answer}) & symbols  # nor any symbol's colour
        for sym in symbols:  # the pixels agree: those are the symbols drawn
            assert _symbol(frames[0], sym, 16)[1] in synth.SHAPES
    with pytest.raises(synth.SynthError, match="symbols \\+ max_visits \\+ options - 1 must be <= 7"):
        synth.make_config({"out": str(tmp_path / "x"), "qtypes": ["seen"], "symbols": 4, "max_visits": 3}).validate()


def test_every_answer_matches_the_decoded_frames(ds):
    size = SMALL.get("size", 32)
    checked = Counter()
    videos: dict[str, np.ndarray] = {}
    for split in ("val", "test"):
        for rec in _jsonl(ds / f"{split}_mc.jsonl"):
            if rec["video"] not in videos:
                clip = read_video(ds / rec["video"], fps=1.0, max_frames=None)
                assert clip.timestamps == [float(t) for t in range(rec["duration"])]
                videos[rec["video"]] = clip.frames
            q = dict(rec, answer_text=rec["options"]["ABCD".index(rec["answer"])])
            _check(q, videos[rec["video"]], size)
            checked[rec["qtype"]] += 1
    for rec in _jsonl(ds / "train.jsonl"):  # training answers too, read with the other backend
        frames = read_video(ds / rec["video"], fps=1.0, max_frames=None, backend="pyav").frames
        humans = [t["value"] for t in rec["conversations"] if t["from"] == "human"]
        gpts = [t["value"] for t in rec["conversations"] if t["from"] == "gpt"]
        for q, h, g in zip(rec["questions"], humans, gpts):
            assert (g == "ABCD"[q["options"].index(q["answer"])]) if q["format"] == "mc" else g == q["answer"]
            _check(dict(q, answer_text=q["answer"], question=h.split("\n")[1 if h.startswith("<video>") else 0]), frames, size)
            checked[q["qtype"]] += 1
    assert set(checked) == set(synth.DEFAULT_QTYPES) and sum(checked.values()) == (8 + 3 + 6) * len(synth.DEFAULT_QTYPES)


def test_answer_letters_are_balanced(ds):
    for split in ("val", "test"):
        letters = Counter(r["answer"] for r in _jsonl(ds / f"{split}_mc.jsonl"))
        assert max(letters.values()) / sum(letters.values()) <= 0.35, letters
    turns = [t["value"] for r in _jsonl(ds / "train.jsonl") for t in r["conversations"] if t["from"] == "gpt"]
    letters = Counter(v for v in turns if v in "ABCD")
    assert len(letters) == 4 and max(letters.values()) / sum(letters.values()) <= 0.35, letters
    # larger draw, no videos needed: the balancer itself never lets a letter run ahead
    bal = synth.LetterBalancer(np.random.default_rng(0), 4)
    counts = Counter(bal.next() for _ in range(1001))
    assert max(counts.values()) - min(counts.values()) <= 1


def test_splits_share_no_clip(ds):
    seen: dict[str, str] = {}
    sigs: dict[tuple, str] = {}
    for split in synth.SPLITS:
        for rec in _jsonl(ds / f"{split}.jsonl"):
            assert rec["video"].startswith(f"videos/{split}/") and (ds / rec["video"]).is_file()
            assert rec["video"] not in seen
            seen[rec["video"]] = split
            sig = synth.Scene.from_dict(rec["scene"]).signature()
            assert sig not in sigs, f"{rec['id']} repeats {sigs.get(sig)}"
            sigs[sig] = rec["id"]
        if split != "train":
            assert {r["video"] for r in _jsonl(ds / f"{split}_mc.jsonl")} <= {v for v, s in seen.items() if s == split}
    assert len(list((ds / "videos").rglob("*.mp4"))) == len(seen) == 8 + 3 + 6


def test_vocabulary_covers_every_text(ds):
    vocab = set(synth.vocabulary(max_duration=SMALL["max_duration"]))
    texts = []
    for split in synth.SPLITS:
        texts += [t["value"] for r in _jsonl(ds / f"{split}.jsonl") for t in r["conversations"]]
    for split in ("val", "test"):
        items, _, _ = read_items(ds / f"{split}_mc.jsonl")
        texts += [t.value for it in items for t in it.conversation]
    words = {w for t in texts for w in synth.words(t)}
    assert words <= vocab, words - vocab
    assert len(vocab) < 120  # small and closed
    assert "<video>" in vocab and "17" in vocab and "s" in vocab


def test_records_carry_ceiling_ground_truth(ds):
    recs = _jsonl(ds / "test_mc.jsonl")
    for r in recs:
        assert r["category"] == synth.QTYPES[r["qtype"]]
        assert r["evidence_times"] == sorted({t for g in r["evidence_groups"] for t in g})
        assert r["needs_detail"] == (r["qtype"] in ("shape", "where"))
        assert synth.ceiling(r, fps=1.0, max_frames=None) == 1.0  # every second seen: all answerable
    one = [synth.ceiling(r, fps=1.0, max_frames=1) for r in recs]
    assert np.mean(one) < 0.9 and min(one) == 0.25  # one frame misses most balls
    assert synth.answerable([[3, 4], [9]], [0, 4, 9]) and not synth.answerable([[3, 4], [9]], [0, 5, 9])
    # the budget's second cap (N_max // M frames of those decoded) by the same truncated linspace
    r = dict(recs[0], duration=20, native_fps=4)
    assert synth.frame_times(r, 1.0, 8) == [0.0, 2.0, 5.0, 8.0, 10.0, 13.0, 16.0, 19.0]
    assert synth.frame_times(r, 1.0, 8, keep=3) == [0.0, 8.0, 19.0]
    table = synth.ceilings(recs, 1.0, 8, keep=2)
    assert set(table) == {"overall", *(synth.QTYPES[q] for q in synth.DEFAULT_QTYPES)} and table["spatial"] == 1.0
    assert table["overall"] < synth.ceilings(recs, 1.0, 8)["overall"]  # 2 frames miss balls 8 frames see


def test_generation_is_idempotent_and_keyed_by_settings(ds):
    before = {p: p.stat().st_mtime_ns for p in ds.rglob("*") if p.is_file()}
    synth.generate({"out": str(ds), **SMALL}, progress=False)  # same settings: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in ds.rglob("*") if p.is_file()} == before
    with pytest.raises(synth.SynthError, match=r"differ: seed"):
        synth.generate({"out": str(ds), **dict(SMALL, seed=9)}, progress=False)
    assert {p: p.stat().st_mtime_ns for p in ds.rglob("*") if p.is_file()} == before  # nothing lost


def test_an_unrelated_folder_is_never_overwritten(tmp_path):
    (tmp_path / "videos" / "train").mkdir(parents=True)
    keep = tmp_path / "videos" / "train" / "mine.mp4"
    keep.write_bytes(b"user data")
    with pytest.raises(synth.SynthError, match="non-empty folder that holds no synthetic dataset"):
        synth.generate({"out": str(tmp_path), **dict(SMALL, train=1, val=0, test=0)}, progress=False)
    assert keep.read_bytes() == b"user data"
    # an interrupted run leaves its marker: the next run may clean up and finish
    out = tmp_path / "crashed"
    (out / "videos" / "train").mkdir(parents=True)
    (out / "videos" / "train" / "half.part.mp4").write_bytes(b"")
    (out / synth.INCOMPLETE).touch()
    synth.generate({"out": str(out), **dict(SMALL, train=1, val=0, test=0)}, progress=False)
    assert sorted(p.name for p in (out / "videos" / "train").iterdir()) == ["train_000000.mp4"]
    assert not (out / synth.INCOMPLETE).exists() and (out / "manifest.json").is_file()


def test_bad_settings_name_the_key(tmp_path):
    with pytest.raises(synth.SynthError, match="unknown synth setting 'colours'.*valid: out, seed"):
        synth.make_config({"out": str(tmp_path), "colours": 3})
    with pytest.raises(synth.SynthError, match="synth.qtypes: valid question types: shape, where"):
        synth.make_config({"out": str(tmp_path), "qtypes": "shape,dance"})
    with pytest.raises(synth.SynthError, match="synth.size: expected int, got str '32'"):
        synth.make_config({"out": str(tmp_path), "size": "32"})
    with pytest.raises(synth.SynthError, match="synth.min_duration: must fit"):
        synth.make_config({"out": str(tmp_path), "min_duration": 5, "max_duration": 6})


def test_cli_main(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--seed", "1", "--train", "2", "--val", "1", "--test", "1", "--min-duration", "12",
            "--max-duration", "12", "--max-visits", "2", "--qtypes", "shape,count", "--size", "16", "--quiet"]
    assert synth.main(argv) == 0
    assert "train 2" in capsys.readouterr().out
    recs = _jsonl(out / "test_mc.jsonl")
    assert {r["qtype"] for r in recs} == {"shape", "count"}
    clip = read_video(out / recs[0]["video"], fps=1.0)
    assert clip.frames.shape == (12, 16, 16, 3)
    for rec in recs:  # at 16 px the symbols touch the ball band: answers still match the pixels
        frames = read_video(out / rec["video"], fps=1.0, max_frames=None).frames
        _check(dict(rec, answer_text=rec["options"]["ABCD".index(rec["answer"])]), frames, 16)
    assert synth.main(argv[:-1] + ["--seed", "2", "--quiet"]) == 2  # other settings, same folder
    assert "differ: seed" in capsys.readouterr().err
    # a folder made by an older generator version is stale: regenerated, not refused
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["config"]["version"] = synth.VERSION - 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / recs[0]["video"]).write_bytes(b"old")
    assert synth.main(argv) == 0
    assert json.loads((out / "manifest.json").read_text())["config"]["version"] == synth.VERSION
    assert read_video(out / recs[0]["video"], fps=1.0).frames.shape == (12, 16, 16, 3)


@pytest.mark.parametrize("size", [16, 32])
def test_pooling_a_glyph_hides_its_shape(size):
    """By construction the detail family needs tokens finer than a glyph: with equal-area shapes
    a token pooled over a corner (M = 4 on a 2x2 grid) is the same for every shape."""
    geo = synth.geometry(size)
    frames = {}
    for equal in (True, False):
        for shape in synth.SHAPES:
            sym = synth.Symbol("red", shape, "top left", 1, 0, geo["g"])
            scene = synth.Scene("x", "test", 10, size, 4, [sym], [], equal)
            frames[equal, shape] = synth.render(scene, 0.0).astype(float)
    half = size // 2
    pooled = {k: f[:half, :half].mean((0, 1)) for k, f in frames.items()}
    for shape in synth.SHAPES[1:]:
        assert np.allclose(pooled[True, shape], pooled[True, "square"])  # same token whatever the shape
        assert not np.array_equal(frames[True, shape], frames[True, "square"])  # full resolution tells them apart
    assert len({tuple(pooled[False, s]) for s in synth.SHAPES}) == 4  # unequal areas leak the shape when pooled


def test_encoding_more_clips_than_a_pipe_holds_finishes(tmp_path):
    """Each worker reads its jobs and prints one line per clip: once both outgrew a pipe (64 KiB: 945
    clips of the base's stage A) the generator waited forever on its own workers."""
    import threading

    cfg = synth.make_config({"out": str(tmp_path), "train": 200, "val": 0, "test": 0, "size": 16, "min_duration": 1,
                             "max_duration": 1, "min_visits": 0, "max_visits": 0, "symbols": 1, "qtypes": ["shape"]})
    deep = tmp_path.joinpath(*["d" * 250] * 5)  # ~1.3 KB a path: 100 clips a worker outgrow both pipes
    deep.mkdir(parents=True)
    jobs = [(dataclasses.asdict(sc), str(deep / f"{sc.id}.mp4"), cfg.crf, cfg.pix_fmt)
            for sc in synth.draw_scenes(cfg)["train"]]
    assert sum(len(path) + 1 for _, path, _, _ in jobs[::2]) > 2 * 64 * 1024
    counted: list[int] = []
    errors: list[BaseException] = []

    def encode() -> None:
        try:
            synth.encode_in_fresh_processes(jobs, workers=2, done=lambda: counted.append(1))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    worker = threading.Thread(target=encode, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "encoding hung: the workers' pipes filled up"
    assert not errors and len(counted) == len(jobs)
    assert all(Path(path).stat().st_size > 0 for _, path, _, _ in jobs)


def test_a_failing_encoder_worker_names_its_error(tmp_path):
    bad = [({"not": "a scene"}, str(tmp_path / "x.mp4"), 10, "yuv444p")]
    with pytest.raises(synth.SynthError, match="encoding synthetic clips failed"):
        synth.encode_in_fresh_processes(bad, workers=1)


def test_encoding_workers_do_not_inherit_what_this_process_has_seen(monkeypatch):
    """After a Lightning fit (PL_GLOBAL_SEED, ...) and a decord import (its folder on PATH) the workers'
    inherited environment had grown, and one clip of the same scene encoded to other bytes (the suite's
    same-seed test failed after test_checkpoint). The workers now get the same few variables always."""
    before = synth._worker_env()
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    monkeypatch.setenv("PATH", "/somewhere/decord:" + os.environ.get("PATH", ""))
    assert synth._worker_env() == before and "PL_GLOBAL_SEED" not in before
    assert set(before) <= {"PATH", "LC_ALL", "PYTHONPATH"}
