"""Completing a ``dynvlm eval`` report the way the benchmark's lmms-eval task counts.

The test loop scores the questions whose video could be read. lmms-eval keeps a question whose
video cannot be read in its denominator (its answer is empty, so it is wrong); so does
:func:`complete_report`: every question of the evaluated file without a prediction is added to
``predictions.jsonl`` as wrong (``pred: -1``, ``unreadable``: its file), listed in the report's
``unreadable`` with the reason, and counted in ``accuracy``, ``per_category`` and, for a
benchmark's file, the task's own metric (``benchmark.score``, on lmms-eval's scale).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dynvlm.data.annotations import MC_INSTRUCTION, Item
from dynvlm.data.images import IMAGES_KIND, image_array
from dynvlm.data.items import read_items
from dynvlm.data.video import VideoReadError, read_video
from dynvlm.scoring.benchmarks import SCORINGS, resolve_mode
from dynvlm.scoring.records import accuracy_metrics


def file_items(cfg: Mapping[str, Any]) -> tuple[list[Item], Path]:
    """The evaluated file's question items, as the data module reads them (same instruction,
    benchmark, ``max_samples``), and the folder their media paths are relative to."""
    data = dict(cfg.get("data") or {})
    path = Path(str(data["test"])).expanduser()
    instruction = data.get("mc_instruction") if data.get("mc_instruction") is not None else MC_INSTRUCTION
    items, _problems, is_mc = read_items(path, "skip", instruction, data.get("benchmark") or "auto")
    if not is_mc:
        return [], path.parent
    if data.get("max_samples") is not None:
        items = items[: int(data["max_samples"])]
    root = Path(str(data["root"])).expanduser() if data.get("root") else path.parent
    return items, root


def unreadable_reason(item: Item, root: Path, cfg: Mapping[str, Any]) -> tuple[str, str]:
    """``(file, reason)`` why ``item``'s media could not be read (read again here to name the reason).

    Args:
        item: a question whose sample the test loop did not get.
        root: the folder its media path is relative to.
        cfg: the run config (``budget.fps``, ``budget.max_frames``, ``data.backend`` read the video).
    """
    path = Path(item.media).expanduser()
    path = path if path.is_absolute() else root / path
    if item.kind != IMAGES_KIND and not path.is_file():
        return str(path), "no such file"
    try:
        if item.kind == IMAGES_KIND:
            for src in item.meta.get("images") or []:
                image_array(src, root)
        else:
            budget = dict(cfg.get("budget") or {})
            read_video(path, fps=budget.get("fps", 1.0), max_frames=budget.get("max_frames", 128),
                       backend=(cfg.get("data") or {}).get("backend", "auto"))
    except VideoReadError as exc:
        return str(exc.path), exc.reason
    return str(path), "not evaluated (see the log)"


def complete_report(report: dict[str, Any], cfg: Mapping[str, Any], predictions: Path) -> dict[str, Any]:
    """``report`` (from :func:`dynvlm.evaluation.evaluate.summarise`) with every question of the file counted.

    Args:
        report: the test loop's report.
        cfg: the evaluation-time run config (plain dict).
        predictions: the ``predictions.jsonl`` the test loop wrote (appended to).

    Returns:
        ``report`` plus ``unreadable`` (``[{question_id, file, reason}]``), ``benchmark`` (``{name,
        task, metric, score, scale}`` for a benchmark's file, else ``None``) and the resolved
        ``mode``/``reading``, with ``accuracy``, ``questions`` and ``per_category`` recomputed over
        every question with an answer key.
    """
    eval_cfg = dict(cfg.get("eval") or {})
    if not (cfg.get("data") or {}).get("test") or not predictions.is_file():
        # dynvlm's own synthetic test file: nothing is a benchmark's, and its mode resolves generically
        return {**report, "mode": resolve_mode(eval_cfg.get("mode", "auto"), {}), "reading": eval_cfg.get("reading", "task"),
                "unreadable": [], "benchmark": None}
    items, root = file_items(cfg)
    records = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
    seen = {r.get("question_id") for r in records}
    unreadable = []
    for item in items:
        qid = item.meta.get("question_id", item.id)
        if qid in seen:
            continue
        file, reason = unreadable_reason(item, root, cfg)
        unreadable.append({"question_id": qid, "file": file, "reason": reason})
        records.append({"kind": "mc", "question_id": qid, "category": item.meta.get("category", ""), "pred": -1,
                        "answer": item.meta.get("answer"), "text": None, "letter": "", "unreadable": file,
                        **({"benchmark": item.meta["benchmark"], "group": item.meta.get("task_group", "")}
                           if item.meta.get("benchmark") else {})})
    if unreadable:
        with predictions.open("a") as f:
            for r in records[len(records) - len(unreadable):]:
                f.write(json.dumps(r) + "\n")
    scored = [r for r in records if r.get("kind") == "mc" and r.get("answer") is not None]
    out = dict(report)
    if scored:  # the test loop's metrics, over every question now
        metrics = accuracy_metrics("test", scored)
        out["accuracy"] = metrics["test/acc"]
        out["questions"] = int(metrics["test/n"])
        out["per_category"] = {k.removeprefix("test/acc/"): v for k, v in metrics.items() if k.startswith("test/acc/")}
    first = items[0].meta if items else {}
    out["mode"] = resolve_mode(eval_cfg.get("mode", "auto"), first)
    out["reading"] = eval_cfg.get("reading", "task")
    out["unreadable"] = unreadable
    scoring = SCORINGS.get(str(first.get("benchmark") or ""))
    out["benchmark"] = None
    if scoring is not None and scored:
        rows = [{"correct": r["pred"] == r["answer"], "group": r.get("group", "")} for r in scored]
        out["benchmark"] = {"name": scoring.name, "task": scoring.task, "metric": scoring.metric,
                            "score": scoring.aggregate(rows), "scale": scoring.scale}
    return out


def report_markdown(report: Mapping[str, Any]) -> str:
    """The lines :func:`complete_report` adds to ``eval.md``: the benchmark's score and the unreadable
    questions as a table (``""`` when neither applies)."""
    lines = []
    bench = report.get("benchmark")
    if bench:
        lines += ["", f"- {bench['name']}: {bench['metric']} = {bench['score']:.4g} (lmms-eval task `{bench['task']}`'s "
                      f"metric and scale; read with `eval.reading={report.get('reading')}`)"]
    bad = report.get("unreadable") or []
    if bad:
        lines += ["", f"## Unreadable ({len(bad)} questions, counted wrong)", "", "| question | file | reason |", "|---|---|---|"]
        lines += [f"| {u['question_id']} | `{u['file']}` | {u['reason']} |" for u in bad]
    return "\n".join(lines) + ("\n" if lines else "")
