"""dynvlm.data.annotations: LLaVA training files and the MC shapes of VideoMME, MLVU, EgoSchema,
PerceptionTest, from JSON, JSONL and parquet."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dynvlm.data.annotations import (
    MC_INSTRUCTION,
    AnnotationError,
    format_mc,
    mc_item,
    read_llava,
    read_mc,
)
from dynvlm.data.items import read_items
from dynvlm.records import MCQuestion


def _jsonl(path: Path, recs: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


LLAVA = [
    {"id": "a", "video": "v/a.mp4", "conversations": [{"from": "human", "value": "<video>\nWhat?"}, {"from": "gpt", "value": "red"}],
     "duration": 12},
    {"id": "b", "image": "i/b.png", "conversations": [{"from": "human", "value": "Describe."}, {"from": "gpt", "value": "a dot"},
                                                       {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "blue"}]},
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_llava_records(tmp_path, suffix):
    path = _json(tmp_path / "t.json", LLAVA) if suffix == ".json" else _jsonl(tmp_path / "t.jsonl", LLAVA)
    items, problems = read_llava(path)
    assert problems == []
    a, b = items
    assert (a.id, a.media, a.kind, a.meta) == ("a", "v/a.mp4", "video", {"duration": 12})
    assert [(t.role, t.value) for t in a.conversation] == [("human", "<video>\nWhat?"), ("gpt", "red")]
    assert b.kind == "image" and b.conversation[0].value == "<image>\nDescribe."  # placeholder put in front
    assert len(b.conversation) == 4 and b.conversation[2].value == "Colour?"
    items2, _, is_mc = read_items(path)
    assert not is_mc and [i.id for i in items2] == ["a", "b"]


def test_unreadable_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "t.jsonl"
    lines = [json.dumps(LLAVA[0]), "", '{"id": "broken", "video": ', json.dumps(LLAVA[1]), "[1, 2]"]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AnnotationError, match=rf"{path}:3: not valid JSON"):
        read_llava(path)
    items, problems = read_llava(path, on_error="skip")
    assert [i.id for i in items] == ["a", "b"]
    assert [w for w, _ in problems] == [f"{path}:3", f"{path}:5"]
    assert "expected a JSON object" in problems[1][1]


def test_bad_json_file_names_the_line(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('[\n {"id": "a"},\n {"id": oops}\n]\n')
    with pytest.raises(AnnotationError, match=rf"{path}:3: not valid JSON"):
        read_llava(path)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"id": "x", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, "needs a 'video' or 'image'"),
        ({"video": "a.mp4", "conversations": []}, "non-empty list"),
        ({"video": "a.mp4", "conversations": [{"from": "robot", "value": "x"}]}, r"conversations\[0\].from is 'robot'; valid: human"),
        ({"video": "a.mp4", "conversations": [{"from": "human", "value": "<video><video>"}, {"from": "gpt", "value": "x"}]}, "one <video> placeholder"),
        ({"video": "a.mp4", "conversations": [{"from": "human", "value": "<video>"}, {"from": "gpt", "value": "<video>"}]}, "found 2"),
        ({"video": "a.mp4", "conversations": [{"from": "gpt", "value": "x"}]}, "start with a human turn"),
    ],
)
def test_bad_llava_records_name_where(tmp_path, record, message):
    path = _jsonl(tmp_path / "t.jsonl", [LLAVA[0], record])
    with pytest.raises(AnnotationError, match=message) as err:
        read_llava(path)
    assert err.value.where == f"{path}:2"


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(AnnotationError, match="no such annotation file"):
        read_llava(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(AnnotationError, match=r"unknown annotation format '.csv'; valid: .json, .jsonl, .parquet"):
        read_items(tmp_path / "x.csv")
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(AnnotationError, match="not a readable parquet"):
        read_mc(tmp_path / "x.parquet")


# ------------------------------------------------------------------------------------------
# multiple-choice shapes

VIDEOMME = {
    "video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
    "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-1",
    "task_type": "Counting Problem", "question": "How many apples are on the table?",
    "options": ["A. One.", "B. Two.", "C. Three.", "D. Four."], "answer": "C",
}
MLVU = {"video": "1.mp4", "duration": 435.5, "question": "What does the man do?", "candidates": ["runs", "sits", "jumps", "sleeps"],
        "answer": "sits", "question_type": "plotQA"}
MLVU_LMMS = {"video_name": "2.mp4", "question": "Which animal appears?\n(A) cat\n(B) dog\n(C) bird\n(D) fish", "answer": "B",
             "task_type": "needle", "duration": 100}
EGOSCHEMA = {"q_uid": "0074f737-11cb", "google_drive_id": "1x", "question": "What is C doing?", "option 0": "cooking",
             "option 1": "cleaning", "option 2": "reading", "option 3": "painting", "option 4": "sleeping", "answer": 3}
EGOSCHEMA_LMMS = {"question_idx": "q7", "question": "Why?", "video_idx": "abc", "option": ["a", "b", "c", "d", "e"], "answer": "4"}
PERCEPTION_NESTED = {
    "video_10909": {"metadata": {"num_frames": 300}, "mc_question": [
        {"id": 0, "question": "What is the person holding?", "options": ["a cup", "a pen", "a key"], "answer_id": 1,
         "area": "physics", "reasoning": "descriptive", "tag": ["object"]},
        {"id": 1, "question": "Did it fall?", "options": ["yes", "no", "unsure"], "answer_id": 0, "area": "memory",
         "reasoning": "explanatory", "tag": []},
    ]},
}
PERCEPTION_FLAT = {"video_name": "video_7", "question_id": "video_7_0", "question": "Where is it?", "options": ["left", "right", "middle"],
                   "answer_id": 2, "area": "semantics", "reasoning": "predictive", "tag": ["x"]}


def test_videomme_shape(tmp_path):
    (q,), _ = read_mc(_jsonl(tmp_path / "mme.jsonl", [VIDEOMME]))
    assert q == MCQuestion("001-1", "fFjv93ACGo8.mp4", "How many apples are on the table?", ["One.", "Two.", "Three.", "Four."], 2,
                           "Counting Problem", q.meta)
    assert q.answer_letter == "C" and q.meta["duration"] == "short" and q.meta["domain"] == "Knowledge"


def test_mlvu_shapes(tmp_path):
    (a, b), _ = read_mc(_json(tmp_path / "mlvu.json", [MLVU, MLVU_LMMS]))
    assert (a.video, a.options, a.answer, a.category) == ("1.mp4", ["runs", "sits", "jumps", "sleeps"], 1, "plotQA")
    assert (b.video, b.question, b.options, b.answer, b.category) == ("2.mp4", "Which animal appears?", ["cat", "dog", "bird", "fish"], 1, "needle")


def test_egoschema_shapes(tmp_path):
    (a, b), _ = read_mc(_jsonl(tmp_path / "ego.jsonl", [EGOSCHEMA, EGOSCHEMA_LMMS]))
    assert (a.id, a.video, a.options[3], a.answer) == ("0074f737-11cb", "0074f737-11cb.mp4", "painting", 3)
    assert len(a.options) == 5 and "option 0" not in a.meta and a.meta["google_drive_id"] == "1x"
    assert (b.id, b.video, b.options, b.answer) == ("q7", "abc.mp4", ["a", "b", "c", "d", "e"], 4)
    unlabeled = dict(EGOSCHEMA)
    del unlabeled["answer"]  # the public test split has no key
    (c,), _ = read_mc(_jsonl(tmp_path / "ego2.jsonl", [unlabeled]))
    assert c.answer is None and c.answer_letter is None


def test_perceptiontest_nested_json_and_parquet(tmp_path):
    qs, _ = read_mc(_json(tmp_path / "pt.json", PERCEPTION_NESTED))
    assert [(q.id, q.video, q.answer, q.category) for q in qs] == [
        ("video_10909_0", "video_10909.mp4", 1, "physics"), ("video_10909_1", "video_10909.mp4", 0, "memory")]
    assert qs[0].meta["reasoning"] == "descriptive"
    rows = [PERCEPTION_FLAT, VIDEOMME]
    columns = {k: [r.get(k) for r in rows] for k in dict.fromkeys(k for r in rows for k in r)}  # union of both shapes
    pq.write_table(pa.table(columns), tmp_path / "pt.parquet")
    (p, m), _ = read_mc(tmp_path / "pt.parquet")
    assert (p.id, p.video, p.options, p.answer, p.category) == ("video_7_0", "video_7.mp4", ["left", "right", "middle"], 2, "semantics")
    assert (m.answer, m.video) == (2, "fFjv93ACGo8.mp4")


def test_bad_mc_records_name_row_or_line(tmp_path):
    bad = dict(VIDEOMME, answer="F")
    with pytest.raises(AnnotationError, match=r"mme.jsonl:2: answer 'F' is not a letter, index or text of the 4 options"):
        read_mc(_jsonl(tmp_path / "mme.jsonl", [VIDEOMME, bad]))
    pq.write_table(pa.Table.from_pylist([dict(PERCEPTION_FLAT, question="")]), tmp_path / "bad.parquet")
    with pytest.raises(AnnotationError, match=r"bad.parquet: row 0: needs a non-empty 'question'"):
        read_mc(tmp_path / "bad.parquet")
    noopt = {k: v for k, v in VIDEOMME.items() if k != "options"}
    qs, problems = read_mc(_jsonl(tmp_path / "m2.jsonl", [noopt, VIDEOMME]), on_error="skip")
    assert len(qs) == 1 and problems[0][0].endswith("m2.jsonl:1") and "no options" in problems[0][1]


def test_mc_item_is_the_contract_prompt(tmp_path):
    (q,), _ = read_mc(_jsonl(tmp_path / "mme.jsonl", [VIDEOMME]))
    item = mc_item(q)
    assert [t.role for t in item.conversation] == ["human", "gpt"]
    assert item.conversation[0].value == (
        "<video>\nHow many apples are on the table?\nA. One.\nB. Two.\nC. Three.\nD. Four.\n" + MC_INSTRUCTION)
    assert item.conversation[1].value == "C"
    assert item.meta["options"] == q.options and item.meta["answer"] == 2
    assert item.meta["category"] == "Counting Problem" and item.meta["question_id"] == "001-1"
    items, _, is_mc = read_items(tmp_path / "mme.jsonl", instruction="Pick one.", benchmark="generic")
    assert is_mc and items[0].conversation[0].value.endswith("D. Four.\nPick one.")
    assert "benchmark" not in items[0].meta
    assert format_mc("Q?", None) == "Q?"


# ------------------------------------------------------------------------------------------
# benchmark files: each benchmark's own fields and prompt (dynvlm.data.benchmarks)


def test_videomme_duration_is_a_label_and_the_prompt_is_the_tasks(tmp_path):
    """VideoMME's `duration` is its length class: checked against the valid ones, never a number of seconds."""
    items, _, _ = read_items(_jsonl(tmp_path / "mme.jsonl", [VIDEOMME]))
    (item,) = items
    assert item.meta["benchmark"] == "videomme" and item.meta["duration_class"] == "short"
    text = item.conversation[0].value
    assert text.startswith("<video>\nSelect the best answer to the following multiple-choice question")
    assert text.count("A. One.") == 1 and text.endswith("D. Four.\n\nAnswer with the option's letter from the given choices directly.")
    with pytest.raises(AnnotationError, match=r"mme2.jsonl:1: videomme 'duration' is 95.0; valid: short, medium, long"):
        read_items(_jsonl(tmp_path / "mme2.jsonl", [dict(VIDEOMME, duration=95.0)]))


def test_mlvu_lists_its_options_once(tmp_path):
    """An MLVU record with its options both in the question and in `candidates` lists them once,
    in MLVU's own "(A) ..." lines, whichever prompt is built."""
    both = dict(MLVU_LMMS, candidates=["cat", "dog", "bird", "fish"])
    (q,), _ = read_mc(_jsonl(tmp_path / "mlvu.jsonl", [both]))
    assert q.question == "Which animal appears?" and q.options == ["cat", "dog", "bird", "fish"]
    generic, _, _ = read_items(tmp_path / "mlvu.jsonl", benchmark="generic")
    assert generic[0].conversation[0].value.count("cat") == 1
    (item,), _, _ = read_items(tmp_path / "mlvu.jsonl")
    text = item.conversation[0].value
    assert item.meta["benchmark"] == "mlvu" and text.count("cat") == 1 and "(A) cat" in text
    assert text.endswith("(D) fish\nOnly give the best option.\nBest option: (")
    assert item.meta["source_duration"] == 100 and "duration" not in item.meta  # the source video's, not the clip's
    with pytest.raises(AnnotationError, match=r"mlvu 'task_type' is 'chat'; valid: anomaly_reco, count"):
        read_items(_jsonl(tmp_path / "bad.jsonl", [dict(MLVU_LMMS, task_type="chat")]))


def test_unknown_benchmark_name_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"data.benchmark='videome'; valid: auto, generic, muirbench, tempcompass"):
        read_items(_jsonl(tmp_path / "mme.jsonl", [VIDEOMME]), benchmark="videome")
