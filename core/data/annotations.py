"""Annotation files -> items to decode.

Two kinds of file, told apart by their records:

- **training** (LLaVA style, JSON list or JSONL): ``{"id", "video"|"image": path, "conversations":
  [{"from": "human", "value": "<video>\\n..."}, {"from": "gpt", "value": "..."}, ...]}``; other
  keys go to ``meta``.
- **multiple-choice evaluation** (JSON, JSONL or parquet) in the shapes the benchmarks publish,
  all read into :class:`dynvlm.records.MCQuestion`:

  ============== ==================================== ================================ ===============
  shape          video                                options                          answer
  ============== ==================================== ================================ ===============
  VideoMME       ``videoID`` (+ ``.mp4``)             ``options`` ``["A. x", ...]``    letter
  MLVU           ``video`` / ``video_name``           ``candidates`` or inside question option text / letter
  EgoSchema      ``q_uid`` / ``video_idx``            ``option 0``.. or ``option``     index
  PerceptionTest ``video_name`` (+ nested by video)   ``options``                      ``answer_id``
  generic        ``video``                            ``options``                      letter/index/text
  ============== ==================================== ================================ ===============

Every problem is an :class:`AnnotationError` naming the file and line (JSONL), record (JSON) or
row (parquet).

This module parses the shapes; :func:`dynvlm.data.items.read_items` reads a file into items, with
a benchmark's own prompt and reading meta where its records are one benchmark's
(:mod:`dynvlm.data.benchmarks`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dynvlm.data.images import IMAGES_KIND, images_prompt
from dynvlm.records import MCQuestion, Turn

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCDEFGHIJ"
ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}
PLACEHOLDERS = ("<video>", "<image>")
VIDEO_KEYS = ("video", "videoID", "video_name", "video_path", "video_idx", "q_uid", "video_id")
T = TypeVar("T")
_LETTER_PREFIX = re.compile(r"^\(?([A-J])[\.\):]\s*(.*)$", re.S)

__all__ = [
    "AnnotationError",
    "Item",
    "MC_INSTRUCTION",
    "format_mc",
    "is_mc_file",
    "mc_item",
    "parse_records",
    "read_llava",
    "read_mc",
    "read_records",
]


class AnnotationError(ValueError):
    """An annotation record cannot be used; ``where`` is ``"file:line"`` (or ``record``/``row`` N)."""

    def __init__(self, where: str, reason: str) -> None:
        self.where, self.reason = where, reason
        super().__init__(f"{where}: {reason}")


@dataclass
class Item:
    """One annotation record ready to decode into a :class:`dynvlm.records.Sample`.

    Attributes:
        id: stable identifier (record id, question id, or ``file:line``).
        media: path as written in the file (resolved against the data root later).
        kind: ``"video"`` or ``"image"``.
        conversation: turns; the first human turn holds exactly one placeholder.
        meta: other fields (MC: ``options``, ``answer`` index, ``category``, ``question_id``, ...).
        where: ``file:line`` of the record, for error messages.
    """

    id: str
    media: str
    kind: str
    conversation: list[Turn]
    meta: dict[str, Any] = field(default_factory=dict)
    where: str = ""


# ------------------------------------------------------------------------------------------
# files -> raw records


def read_records(path: str | Path, problems: list[tuple[str, str]] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``[(where, record), ...]`` from a ``.json``, ``.jsonl`` or ``.parquet`` file.

    ``where`` is ``"path:LINE"`` for JSONL (1-based, blank lines skipped), ``"path: record N"``
    for JSON lists (0-based) and ``"path: row N"`` for parquet. A JSON object of objects keyed
    by video (PerceptionTest's published layout) is flattened with the key as ``video_name``.

    Raises:
        AnnotationError: missing file, unknown suffix, invalid JSON (with its line), a record that
            is not an object. When ``problems`` is a list, a bad JSONL line is appended to it as
            ``(where, reason)`` and skipped instead.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(str(path), "no such annotation file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        out = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    out.append((where, _as_record(json.loads(line), where)))
                except json.JSONDecodeError as exc:
                    err = AnnotationError(where, f"not valid JSON ({exc.msg} at column {exc.colno})")
                    if problems is None:
                        raise err from None
                    problems.append((where, err.reason))
                except AnnotationError as err:
                    if problems is None:
                        raise
                    problems.append((where, err.reason))
        return out
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise AnnotationError(f"{path}:{exc.lineno}", f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if isinstance(data, dict):
            data = _flatten_by_video(data, path)
        if not isinstance(data, list):
            raise AnnotationError(str(path), f"expected a JSON list of records, got {type(data).__name__}")
        return [(f"{path}: record {i}", _as_record(rec, f"{path}: record {i}")) for i, rec in enumerate(data)]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
            raise AnnotationError(str(path), f"not a readable parquet file ({exc})") from None
        return [(f"{path}: row {i}", rec) for i, rec in enumerate(rows)]
    raise AnnotationError(str(path), f"unknown annotation format {suffix!r}; valid: .json, .jsonl, .parquet")


def _as_record(rec: Any, where: str) -> dict[str, Any]:
    if not isinstance(rec, dict):
        raise AnnotationError(where, f"expected a JSON object, got {type(rec).__name__}")
    return rec


def _flatten_by_video(data: dict[str, Any], path: Path) -> list[Any]:
    # PerceptionTest: {video_id: {"metadata": ..., "mc_question": [...]}}
    if data and all(isinstance(v, dict) and "mc_question" in v for v in data.values()):
        out = []
        for vid, entry in data.items():
            for q in entry["mc_question"]:
                out.append({**q, "video_name": vid, "question_id": f"{vid}_{q.get('id', len(out))}"})
        return out
    for key in ("data", "annotations", "questions"):
        if isinstance(data.get(key), list):
            return data[key]
    raise AnnotationError(str(path), "a JSON object must hold records under 'data'/'annotations'/'questions' or be keyed by video")


def is_mc_file(records: list[tuple[str, dict[str, Any]]]) -> bool:
    """Multiple-choice eval records (no ``conversations``) vs LLaVA training records."""
    return bool(records) and "conversations" not in records[0][1]


# ------------------------------------------------------------------------------------------
# training records


def read_llava(path: str | Path, on_error: str = "raise") -> tuple[list[Item], list[tuple[str, str]]]:
    """LLaVA-style records -> ``(items, problems)``; ``problems`` are ``(where, reason)`` of skipped records.

    With ``on_error="raise"`` the first problem raises :class:`AnnotationError` instead.
    """
    return _read(path, on_error, llava_item)


def llava_item(rec: dict[str, Any], where: str) -> Item:
    """One LLaVA record -> :class:`Item`; raises :class:`AnnotationError` naming ``where`` and the key."""
    kind = "image" if "image" in rec and "video" not in rec else "video"
    media = rec.get(kind)
    if not isinstance(media, str) or not media:
        raise AnnotationError(where, "needs a 'video' or 'image' path (text-only records are not supported)")
    convs = rec.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise AnnotationError(where, "'conversations' must be a non-empty list of {from, value}")
    turns = []
    for i, t in enumerate(convs):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise AnnotationError(where, f"conversations[{i}] must have 'from' and 'value'")
        role = ROLES.get(str(t["from"]))
        if role is None:
            raise AnnotationError(where, f"conversations[{i}].from is {t['from']!r}; valid: {', '.join(ROLES)}")
        turns.append(Turn(role, str(t["value"])))
    if turns[0].role != "human" or not any(t.role == "gpt" for t in turns):
        raise AnnotationError(where, "conversations must start with a human turn and contain a gpt answer")
    _normalise_placeholder(turns, kind, where)
    meta = {k: v for k, v in rec.items() if k not in ("conversations", kind, "id")}
    return Item(str(rec.get("id", where)), media, kind, turns, meta, where)


def _normalise_placeholder(turns: list[Turn], kind: str, where: str) -> None:
    """Exactly one placeholder, in the first human turn, of the record's kind."""
    want = f"<{kind}>"
    counts = [sum(t.value.count(p) for p in PLACEHOLDERS) for t in turns]
    if sum(counts) > 1 or any(counts[1:]):
        raise AnnotationError(where, f"expected one {want} placeholder in the first human turn, found {sum(counts)}")
    first = turns[0]
    if counts[0] == 0:
        first.value = f"{want}\n{first.value}"  # LLaVA data often leaves it out; it goes in front
    else:
        for p in PLACEHOLDERS:
            first.value = first.value.replace(p, want)


# ------------------------------------------------------------------------------------------
# multiple-choice records


def read_mc(path: str | Path, on_error: str = "raise") -> tuple[list[MCQuestion], list[tuple[str, str]]]:
    """Multiple-choice records of any supported shape -> ``(questions, problems)``."""
    return _read(path, on_error, mc_question)


def mc_question(rec: dict[str, Any], where: str) -> MCQuestion:
    """One MC record (VideoMME/MLVU/EgoSchema/PerceptionTest/generic) -> :class:`MCQuestion`."""
    question = rec.get("question")
    if not isinstance(question, str) or not question.strip():
        raise AnnotationError(where, "needs a non-empty 'question'")
    options = _options(rec)
    head, embedded = _split_embedded(question)
    if options is None:
        # MLVU (lmms-eval): the options are lines of the question
        question, options = head, embedded
    elif embedded and _strip_letters(embedded) == _strip_letters(options):
        question = head  # MLVU with `candidates` too: the options are listed once, not twice
    if not options:
        raise AnnotationError(where, "no options: expected 'options', 'candidates', 'option 0'.. or 'option'")
    options = _strip_letters(options)
    video = next((rec[k] for k in VIDEO_KEYS if rec.get(k) not in (None, "")), None)
    if video is None:
        raise AnnotationError(where, f"no video path: expected one of {', '.join(VIDEO_KEYS)}")
    video = str(video)
    if not Path(video).suffix:
        video += ".mp4"
    answer = _answer_index(rec, options, where)
    qid = next((str(rec[k]) for k in ("question_id", "q_uid", "question_idx", "id", "uid") if rec.get(k) is not None), where)
    category = next((str(rec[k]) for k in ("category", "task_type", "question_type", "area", "dim") if rec.get(k)), "")
    used = {"question", "options", "candidates", "option", "answer", "answer_id", *VIDEO_KEYS}
    meta = {k: v for k, v in rec.items() if k not in used and not k.startswith("option ")}
    return MCQuestion(qid, video, question.strip(), options, answer, category, meta)


def _options(rec: dict[str, Any]) -> list[str] | None:
    for key in ("options", "candidates", "option"):
        if isinstance(rec.get(key), list | tuple):
            return [str(o) for o in rec[key]]
    numbered = sorted((int(k.split()[1]), v) for k, v in rec.items() if re.fullmatch(r"option \d+", k))
    if numbered:
        return [str(v) for _, v in numbered]
    return None


def _split_embedded(question: str) -> tuple[str, list[str]]:
    lines = question.strip().splitlines()
    opts, head = [], []
    for line in lines:
        m = _LETTER_PREFIX.match(line.strip())
        if m and len(opts) == ord(m.group(1)) - ord("A"):
            opts.append(line.strip())
        elif not opts:
            head.append(line)
    return "\n".join(head), opts


def _strip_letters(options: list[str]) -> list[str]:
    matches = [_LETTER_PREFIX.match(o.strip()) for o in options]
    if all(m and m.group(1) == LETTERS[i] for i, m in enumerate(matches)):
        return [m.group(2).strip() for m in matches]  # type: ignore[union-attr]
    return [o.strip() for o in options]


def _answer_index(rec: dict[str, Any], options: list[str], where: str) -> int | None:
    raw = rec.get("answer_id")
    if raw is None:  # parquet fills columns a row lacks with None
        raw = rec.get("answer")
    if raw is None or raw == "":
        return None
    idx: int | None = None
    if isinstance(raw, bool):
        idx = None
    elif isinstance(raw, int):
        idx = raw
    else:
        text = str(raw).strip()
        m = _LETTER_PREFIX.match(text)
        if text.isdigit():
            idx = int(text)
        elif len(text) == 1 and text.upper() in LETTERS:
            idx = LETTERS.index(text.upper())
        elif m and (not m.group(2) or _strip_letters([text])[0] in options):
            idx = LETTERS.index(m.group(1))
        elif text in options:  # MLVU: the answer is the option text
            idx = options.index(text)
    if idx is None or not 0 <= idx < len(options):
        raise AnnotationError(where, f"answer {raw!r} is not a letter, index or text of the {len(options)} options")
    return idx


def format_mc(question: str, options: list[str] | None, instruction: str = MC_INSTRUCTION) -> str:
    """``"{question}\\nA. ...\\nB. ...\\n{instruction}"`` (the question alone when ``options`` is None)."""
    if options is None:
        return question
    lines = [question, *(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))]
    if instruction:
        lines.append(instruction)
    return "\n".join(lines)


def mc_item(q: MCQuestion, instruction: str = MC_INSTRUCTION, where: str = "", prompt: str | None = None) -> Item:
    """An :class:`MCQuestion` as an eval item: ``[human "<video>\\n{question}\\nA. ...", gpt "{letter}"]``;
    ``meta`` = the question's meta plus ``options``, ``answer`` (index), ``category``, ``question_id``.

    ``prompt`` replaces the question text after the placeholder (a benchmark's own ``doc_to_text``).
    A question with ``meta["images"]`` (several images, MuirBench) becomes a ``kind="images"`` item
    with one ``<image>`` per image (:func:`dynvlm.data.images.images_prompt`).
    """
    text = prompt if prompt is not None else format_mc(q.question, q.options, instruction)
    human = "<video>\n" + text
    conv = [Turn("human", human), Turn("gpt", q.answer_letter or "")]
    meta = {**q.meta, "options": q.options, "answer": q.answer, "category": q.category, "question_id": q.id,
            "question": q.question}
    kind = "image" if Path(q.video).suffix.lower() in {".png", ".jpg", ".jpeg"} else "video"
    if q.meta.get("images"):
        kind = IMAGES_KIND
        conv[0].value = images_prompt(text, len(q.meta["images"]))
    elif kind == "image":
        conv[0].value = conv[0].value.replace("<video>", "<image>", 1)
    return Item(q.id, q.video, kind, conv, meta, where)


# ------------------------------------------------------------------------------------------


def check_on_error(on_error: str) -> None:
    """Raise ``ValueError`` unless ``on_error`` is ``"skip"`` or ``"raise"``."""
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")


def _read(path, on_error, parse):
    check_on_error(on_error)
    bad: list[tuple[str, str]] = []
    got, problems = parse_records(read_records(path, bad if on_error == "skip" else None), on_error, parse)
    return [x for x, _ in got], bad + problems


def parse_records(records: list[tuple[str, dict[str, Any]]], on_error: str,
                  parse: Callable[[dict[str, Any], str], T]) -> tuple[list[tuple[T, str]], list[tuple[str, str]]]:
    """``parse(record, where)`` of every ``(where, record)`` pair: ``(parsed, problems)``.

    ``parsed`` holds ``(result, where)`` pairs; an :class:`AnnotationError` is raised
    (``on_error="raise"``) or listed in ``problems`` as ``(where, reason)`` (``"skip"``).
    """
    out, problems = [], []
    for where, rec in records:
        try:
            out.append((parse(rec, where), where))
        except AnnotationError as exc:
            if on_error == "raise":
                raise
            problems.append((where, exc.reason))
    return out, problems
