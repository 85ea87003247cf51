"""Helpers for the local lmms-eval task files in ``experiments/lmms_tasks`` (offline clusters).

Upstream lmms-eval video tasks find videos under ``$HF_HOME`` (a literal ``~`` when it is
unset), call ``sys.exit`` on a missing video and load their questions from the hub. The local
tasks keep upstream's prompts (``doc_to_text``) and scoring (``process_results`` /
aggregation) and replace the rest:

- questions come from a local file named by ``$DYNVLM_<TASK>_ANNOTATIONS`` (JSON, JSONL or
  parquet, in the benchmark's published shape) — :func:`annotations_loader`;
- videos are looked up under ``$DYNVLM_<TASK>_VIDEOS`` — :func:`video_finder`; a missing one is
  returned as is, so the model reports it by name instead of the whole run exiting;
- a question whose video is missing is scored as unanswered before upstream scoring can pick
  a random option for it — :func:`unanswered_guard`.

No heavy imports here: lmms-eval imports the task ``utils.py`` files while it collects tasks.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("dynvlm.lmms")

VIDEO_SUFFIXES = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov")
FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def env_path(name: str) -> Path:
    """The path in environment variable ``name``; a clear error when it is unset."""
    value = os.environ.get(name, "").strip()
    if not value:
        raise RuntimeError(f"set ${name} (see docs/evaluation.md: local lmms-eval tasks)")
    return Path(os.path.expandvars(value)).expanduser()


def load_annotations(variable: str, split: str | None = None) -> Any:
    """The questions of the file named by ``$variable`` as a ``datasets.Dataset``.

    Args:
        variable: the environment variable holding the annotation file (or a folder of them).
        split: a split name to pick when the file is a folder of splits (default: the only one).
    """
    import datasets

    path = env_path(variable)
    if not path.exists():
        raise FileNotFoundError(f"${variable}={path}: no such annotation file")
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in FORMATS)
    if not files:
        raise FileNotFoundError(f"${variable}={path}: no .json, .jsonl, .parquet or .csv file inside")
    kind = FORMATS.get(files[0].suffix)
    if kind is None:
        raise ValueError(f"${variable}={path}: unknown annotation format {files[0].suffix!r}; valid: {', '.join(FORMATS)}")
    if kind == "json" and files[0].suffix == ".json":
        import json

        data = json.loads(files[0].read_text(encoding="utf-8"))
        if isinstance(data, dict):  # PerceptionTest publishes {video_name: {..., mc_question: [...]}}
            return datasets.Dataset.from_list(_flatten_perceptiontest(data))
    ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split=split or "train")
    log.info("dynvlm: %d questions from %s", len(ds), path)
    return ds


def annotations_loader(variable: str) -> Callable[[Any], Any]:
    """A ``process_docs`` function that ignores the placeholder split and loads ``$variable``."""

    def process_docs(_placeholder: Any) -> Any:
        return load_annotations(variable)

    return process_docs


def _flatten_perceptiontest(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for video, entry in data.items():
        for q in entry.get("mc_question", []):
            rows.append({"video_name": video, "question_id": q.get("id"), "question": q["question"],
                         "options": q["options"], "answer_id": q.get("answer_id"), "area": q.get("area", ""),
                         "reasoning": q.get("reasoning", ""), "tag": q.get("tag", [])})
    return rows


def find_video(root: Path, name: str, suffixes: Sequence[str] = VIDEO_SUFFIXES) -> str:
    """``root/name`` (trying ``suffixes`` when ``name`` has none or is absent); the first candidate
    when none exists, so the model reports the missing file by name."""
    base = root / name
    candidates = [base] if base.suffix else []
    stem = base.with_suffix("") if base.suffix in VIDEO_SUFFIXES else base
    candidates += [stem.with_name(stem.name + s) for s in suffixes]
    for c in candidates:
        if c.is_file():
            return str(c)
    return str(candidates[0])


def video_finder(variable: str, key: str | Callable[[dict[str, Any]], str]) -> Callable[[dict[str, Any]], list[str]]:
    """A ``doc_to_visual`` function: the video of ``doc[key]`` (or ``key(doc)``) under ``$variable``."""

    def doc_to_visual(doc: dict[str, Any]) -> list[str]:
        name = key(doc) if callable(key) else str(doc[key])
        return [find_video(env_path(variable), name)]

    return doc_to_visual


def video_missing(doc_to_visual: Callable[[dict[str, Any]], list[str]], doc: dict[str, Any]) -> str | None:
    """The path of ``doc``'s video when it does not exist, else ``None``."""
    for path in doc_to_visual(doc):
        if isinstance(path, str) and not Path(path).is_file():
            return path
    return None


def unanswered_guard(process_results: Callable[..., dict[str, Any]],
                     doc_to_visual: Callable[[dict[str, Any]], list[str]],
                     unanswered: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Wrap an upstream ``process_results`` so a question whose video is missing scores 0.

    Args:
        process_results: upstream ``(doc, results) -> {metric: value}``.
        doc_to_visual: the task's video lookup.
        unanswered: ``(doc, upstream result for an empty answer) -> result scored wrong``; it
            rewrites the prediction fields so no random fallback of upstream scoring survives.
    """

    @functools.wraps(process_results)
    def wrapped(doc: dict[str, Any], results: Sequence[Any]) -> dict[str, Any]:
        missing = video_missing(doc_to_visual, doc)
        if missing is None:
            return process_results(doc, results)
        log.warning("dynvlm: video %s is missing: question scored as unanswered", missing)
        return unanswered(doc, process_results(doc, [""]))

    return wrapped
