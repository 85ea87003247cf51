"""Per-question records of a test or validation pass, and the accuracies they add up to.

A record is a plain dict (one line of ``predictions.jsonl``):

- multiple choice: ``kind="mc"``, ``question_id``, ``category``, ``pred`` (option index, ``-1`` for
  an answer no option could be read from), ``answer`` (index or ``None``), ``text`` (the generated
  answer in ``generate`` mode, else the likeliest option's letter), ``letter`` (what the reading
  read), ``planned_tokens``, ``actual_tokens``, ``frames``, and ``ceiling`` where the sample carries
  ``evidence_groups`` (synthetic data); a benchmark's question adds ``benchmark`` and ``group`` (the
  key its task aggregates by) and ``guessed`` where the task picked an option at random;
- open-ended: ``kind="open"``, ``text``, ``answer_text``, ``correct`` (exact match) and the usage keys.

The model is reached through :class:`Answerer` (``VideoLLM`` is one), so this module sits below the
model layer and the model's steps call it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from dynvlm.data.questions import coverage_ceiling
from dynvlm.records import Sample, VisualUsage
from dynvlm.scoring.answers import exact_match
from dynvlm.scoring.benchmarks import read_answer, resolve_mode


class _Generated(Protocol):
    texts: list[str]
    usage: list[VisualUsage]


class _Scored(Protocol):
    scores: list[list[float]]
    usage: list[VisualUsage]


class Answerer(Protocol):
    """What scoring needs of a model: generated answers and per-option log-likelihoods, each with the
    visual usage of every sample (``VideoLLM.generate`` / ``VideoLLM.score_options``)."""

    def generate(self, samples: Sequence[Sample]) -> _Generated: ...

    def score_options(self, samples: Sequence[Sample], *, cloze: bool = False) -> _Scored: ...


def _usage_keys(usage: VisualUsage) -> dict[str, Any]:
    return {"planned_tokens": usage.planned_tokens, "actual_tokens": usage.actual_tokens,
            "frames": len(usage.kept_times)}


def mc_records(model: Answerer, samples: Sequence[Sample], mode: str, reading: str = "task") -> list[dict[str, Any]]:
    """Records of the multiple-choice samples among ``samples`` (those with ``meta["options"]``).

    Args:
        model: answers the questions.
        samples: a batch; samples without options are left to :func:`open_records`.
        mode: ``eval.mode``: ``loglik`` (option letters by likelihood), ``cloze`` (option texts after
            the bare question), ``generate`` (a generated answer read for a letter) or ``auto``
            (``generate`` for a benchmark's question, ``loglik`` for dynvlm's own format).
        reading: ``eval.reading``: ``task`` (a benchmark's question read as its lmms-eval task
            reads it) or ``strict`` (:func:`~dynvlm.scoring.answers.extract_choice`).

    Returns:
        One record per question (see the module docstring); ``text`` is the generated answer or, by
        likelihood, the best option's letter; ``letter`` what the reading read; a benchmark's
        question adds ``benchmark`` and ``group`` (its aggregation key), and ``guessed`` where the
        task picked at random.
    """
    mc = [s for s in samples if s.meta.get("options")]
    if not mc:
        return []
    mode = resolve_mode(mode, mc[0].meta)
    if mode == "generate":
        generated = model.generate(mc)
        texts = list(generated.texts)
        reads = [read_answer(t, s.meta, reading) for t, s in zip(texts, mc)]  # unreadable answers: pred -1, wrong
        usage = generated.usage
    else:
        scored = model.score_options(mc, cloze=mode == "cloze")
        best = [max(range(len(sc)), key=sc.__getitem__) for sc in scored.scores]
        texts = [chr(ord("A") + b) for b in best]
        # a benchmark's task reads the best letter like a generated answer (VideoMME reads A-D only)
        reads = [read_answer(t, s.meta, reading) if s.meta.get("benchmark") and reading == "task"
                 else {"pred": b, "letter": t, "guessed": False} for t, b, s in zip(texts, best, mc)]
        usage = scored.usage
    records = []
    for s, r, text, use in zip(mc, reads, texts, usage):
        record = {"kind": "mc", "question_id": s.meta.get("question_id", s.id), "category": s.meta.get("category", ""),
                  "pred": r["pred"], "answer": s.meta.get("answer"), "text": text, "letter": r["letter"],
                  **_usage_keys(use)}
        if r["guessed"]:
            record["guessed"] = True
        if s.meta.get("benchmark"):
            record.update(benchmark=s.meta["benchmark"], group=s.meta.get("task_group", ""))
        if s.meta.get("evidence_groups") is not None:
            # the best accuracy the frames this model really kept allow (synthetic evidence)
            record["ceiling"] = coverage_ceiling(s.meta["evidence_groups"], use.kept_times, len(s.meta["options"]))
        records.append(record)
    return records


def open_records(model: Answerer, samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """Records of the open-ended samples (no options, ending with a gpt answer): the generated text
    exact-matched against that answer."""
    todo = [s for s in samples if not s.meta.get("options") and s.conversation[-1].role == "gpt"]
    if not todo:
        return []
    generated = model.generate(todo)
    return [
        {"kind": "open", "question_id": s.meta.get("question_id", s.id), "category": s.meta.get("category", ""),
         "text": text, "answer_text": s.conversation[-1].value, "correct": exact_match(text, s.conversation[-1].value),
         **_usage_keys(use)}
        for s, text, use in zip(todo, generated.texts, generated.usage)
    ]


def unique_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` with each question id once (the first), in order: a distributed sampler repeats a
    few samples so that every rank gets the same count."""
    out, seen = [], set()
    for r in records:
        qid = r["question_id"]
        if qid and qid in seen:
            continue
        seen.add(qid)
        out.append(r)
    return out


def _means(split: str, name: str, records: Sequence[dict[str, Any]],
           value: Callable[[dict[str, Any]], float]) -> dict[str, float]:
    """``{split}/{name}``: the mean of ``value(record)``, and ``{split}/{name}/{category}`` per category."""
    out = {f"{split}/{name}": sum(value(r) for r in records) / len(records)}
    for cat in sorted({r["category"] for r in records if r["category"]}):
        rows = [r for r in records if r["category"] == cat]
        out[f"{split}/{name}/{cat}"] = sum(value(r) for r in rows) / len(rows)
    return out


def accuracy_metrics(split: str, records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The metrics of a pass's (unique) records, keyed ``{split}/...``.

    ``acc`` (+ per category) and ``n`` over multiple-choice records with an answer; ``ceiling`` (+ per
    category) where records carry one; on ``test`` the mean ``tokens/planned`` and ``tokens/actual``
    per sample (validation logs those per step); ``exact_match`` and ``n_open`` over open-ended records.
    """
    out: dict[str, float] = {}
    scored = [r for r in records if r["kind"] == "mc" and r["answer"] is not None]
    if scored:
        out.update(_means(split, "acc", scored, lambda r: r["pred"] == r["answer"]))
        out[f"{split}/n"] = float(len(scored))
    bounded = [r for r in scored if "ceiling" in r]
    if bounded:
        out.update(_means(split, "ceiling", bounded, lambda r: r["ceiling"]))
    counted = [r for r in records if "planned_tokens" in r]
    if counted and split == "test":
        out[f"{split}/tokens/planned"] = sum(r["planned_tokens"] for r in counted) / len(counted)
        out[f"{split}/tokens/actual"] = sum(r["actual_tokens"] for r in counted) / len(counted)
    opened = [r for r in records if r["kind"] == "open"]
    if opened:
        out.update(_means(split, "exact_match", opened, lambda r: r["correct"]))
        out[f"{split}/n_open"] = float(len(opened))
    return out


def usage_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The visual budget a pass used, from its records: ``{"tokens_per_frame": [distinct M],
    "mean_tokens_per_frame", "frames", "visual_tokens", "planned_tokens", "actual_tokens", "samples"}``
    (means per sample; ``visual_tokens`` = ``planned_tokens``; ``{}`` without records that carry usage)."""
    used = [(int(r["planned_tokens"]), int(r["actual_tokens"]), int(r["frames"])) for r in records if "frames" in r]
    if not used:
        return {}
    n = len(used)
    per_frame = [p // f for p, _, f in used if f]  # every frame of a sample has the plan's M
    return {
        "tokens_per_frame": sorted(set(per_frame)),
        "mean_tokens_per_frame": round(sum(per_frame) / len(per_frame), 3) if per_frame else None,
        "frames": round(sum(f for _, _, f in used) / n, 3),
        "visual_tokens": round(sum(p for p, _, _ in used) / n, 3),
        "planned_tokens": round(sum(p for p, _, _ in used) / n, 3),
        "actual_tokens": round(sum(a for _, a, _ in used) / n, 3),
        "samples": n,
    }
