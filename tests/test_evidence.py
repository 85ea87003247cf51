"""The synthetic task is built the way docs/experiments.md says: for each question family, the tokens
per frame at which its evidence is still in the pixels after pooling, checked on decoded video files.

``shape`` (detail) needs 16 tokens per 16 px frame: at 1 and 4 every option pools to the same value.
``flash`` (coverage) survives pooling to a single token, but only in the frames inside the flash.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynvlm.data import synth
from dynvlm.data.questions import EVIDENCE_TOKENS, evidence_present
from dynvlm.data.scenes import Scene
from dynvlm.data.video import read_video

TOKENS = (1, 4, 16, 64)
#: the ablation's scene settings (experiments/synthetic.yaml), fewer clips
TASK = dict(seed=5, train=0, val=0, test=6, size=16, symbols=4, min_visits=0, max_visits=0, flashes=1,
            min_flash_seconds=1, max_flash_seconds=3, duration_mix=[[8, 8], [28, 32]],
            qtypes=["shape", "shape", "flash"], long_seconds=28, long_qtypes=["shape", "flash", "flash"])


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> tuple[Path, list[dict], dict[str, Scene]]:
    out = synth.generate({"out": str(tmp_path_factory.mktemp("evidence")), **TASK}, progress=False)
    recs = [json.loads(line) for line in (out / "test_mc.jsonl").read_text().splitlines()]
    scenes = {r["id"]: Scene.from_dict(r["scene"]) for r in map(json.loads, (out / "test.jsonl").read_text().splitlines())}
    return out, recs, scenes


def test_the_documented_tokens_are_where_evidence_appears(task):
    out, recs, scenes = task
    checked = set()
    for rec in recs:
        scene = scenes[Path(rec["video"]).stem]
        frames = read_video(out / rec["video"], fps=1.0, max_frames=None).frames
        inside = {int(t) for t in rec["evidence_times"]}
        # a detail question's evidence is every frame; a flash's only the seconds it lasts (one
        # frame inside and one outside it are checked)
        times = sorted(inside)[:1] + [t for t in range(rec["duration"]) if t not in inside][:1]
        for t in times:
            for m in TOKENS:
                want = t in inside and m >= EVIDENCE_TOKENS[rec["qtype"]]
                assert evidence_present(frames[t], scene, rec, float(t), m) == want, (rec["question_id"], t, m)
                checked.add((rec["qtype"], t in inside, m, want))
    # both families seen, shape both hidden (M <= 4) and present (M >= 16), flash present at one token
    assert {("shape", True, 4, False), ("shape", True, 16, True), ("flash", True, 1, True),
            ("flash", False, 1, False)} <= checked


def test_clip_lengths_follow_the_mix_and_flashes_stay_a_minority(task):
    _, recs, scenes = task
    lengths = {s.duration for s in scenes.values()}
    assert lengths <= {8, *range(28, 33)} and 8 in lengths and lengths - {8}
    for s in scenes.values():
        (f,) = s.flashes
        assert 1 <= f.seconds <= 3 and 2 * f.seconds < s.duration and 0 <= f.start <= s.duration - f.seconds
        assert not s.visits and len(s.symbols) == 4
    flash = [r for r in recs if r["qtype"] == "flash"]
    assert flash and all(set(r["options"]) == set(synth.FLASH_COLOURS) for r in flash)  # every other colour absent


def test_long_clips_are_asked_the_long_mix(task):
    _, recs, scenes = task
    asked: dict[str, list[str]] = {}
    for r in recs:
        asked.setdefault(Path(r["video"]).stem, []).append(r["qtype"])
    assert set(asked) == set(scenes)
    for clip, qtypes in asked.items():
        want = TASK["long_qtypes"] if scenes[clip].duration >= TASK["long_seconds"] else TASK["qtypes"]
        assert sorted(qtypes) == sorted(want), (clip, scenes[clip].duration)


@pytest.mark.parametrize(("change", "key"), [
    ({"flashes": 0}, "flashes"),                     # a flash question needs the clip's flash
    ({"qtypes": ["shape", "seen"]}, "min_visits"),   # a ball question needs a ball in every clip
    ({"duration_mix": [[8]]}, "duration_mix"),
    ({"duration_mix": [[9, 8]]}, "duration_mix"),
    ({"min_flash_seconds": 4}, "min_flash_seconds"),
    ({"long_qtypes": ["shape", "dance"]}, "long_qtypes"),
    ({"long_seconds": 0}, "long_seconds"),             # a long mix needs the length it starts at
    ({"long_qtypes": [], "long_seconds": 28}, "long_seconds"),
    ({"long_qtypes": ["seen"]}, "min_visits"),         # the long mix is checked like the short one
])
def test_bad_task_settings_name_the_key(tmp_path, change, key):
    with pytest.raises(synth.SynthError, match=f"synth.{key}:"):
        synth.make_config({"out": str(tmp_path), **TASK, **change})
