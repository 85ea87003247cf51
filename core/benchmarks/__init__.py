"""The paper's multiple-choice benchmarks, each evaluated as its lmms-eval 0.7.3 task evaluates it.

One module per benchmark (:mod:`.videomme`, :mod:`.mlvu`, :mod:`.egoschema`,
:mod:`.perceptiontest`, :mod:`.tempcompass`, :mod:`.muirbench`) states its record fields, its
task's prompt (``doc_to_text`` with the default pre- and post-prompt), how the task reads the
answer and how it aggregates. ``dynvlm eval`` finds the benchmark of a file by its records'
fields (``data.benchmark: auto``) or by name; ``generic`` is dynvlm's own format
(:func:`dynvlm.data.annotations.format_mc`, :func:`dynvlm.answers.extract_choice`).

``eval.reading: task`` (default) reads answers the task's way; ``strict`` reads them with
:func:`dynvlm.answers.extract_choice` (no letter inside a word, no random pick, an answer that
is exactly one option's text counts). See docs/evaluation.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Benchmark, Reading
from .egoschema import BENCHMARK as EGOSCHEMA
from .mlvu import BENCHMARK as MLVU
from .muirbench import BENCHMARK as MUIRBENCH
from .perceptiontest import BENCHMARK as PERCEPTIONTEST
from .tempcompass import BENCHMARK as TEMPCOMPASS
from .videomme import BENCHMARK as VIDEOMME

#: detection order: the first whose shape a record has
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (MUIRBENCH, TEMPCOMPASS, VIDEOMME, EGOSCHEMA, PERCEPTIONTEST, MLVU)}
GENERIC = "generic"
AUTO = "auto"
READINGS = ("task", "strict")

__all__ = ["AUTO", "BENCHMARKS", "GENERIC", "READINGS", "Benchmark", "Reading", "detect", "get", "read_answer"]


def get(name: str) -> Benchmark | None:
    """The benchmark called ``name`` (``None`` for ``generic``); a clear error listing the valid names."""
    if name == GENERIC:
        return None
    if name not in BENCHMARKS:
        raise ValueError(f"data.benchmark={name!r}; valid: {AUTO}, {GENERIC}, {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def detect(record: Mapping[str, Any]) -> Benchmark | None:
    """The benchmark whose record shape ``record`` has (``None``: dynvlm's generic format)."""
    return next((b for b in BENCHMARKS.values() if b.detect(record)), None)


def resolve(name: str, record: Mapping[str, Any] | None) -> Benchmark | None:
    """``data.benchmark`` for a file whose first record is ``record``: ``auto`` detects it."""
    if name == AUTO:
        return detect(record) if record is not None else None
    return get(name)


def read_answer(text: str, meta: Mapping[str, Any], reading: str = "task") -> dict[str, Any]:
    """The option an answer picks, for a question's item ``meta``.

    Args:
        text: the model's answer.
        meta: the sample's meta (``options``; for a benchmark's question also ``benchmark`` and
            what :meth:`Benchmark.extras` stored).
        reading: ``task`` (the benchmark's lmms-eval reading; dynvlm's own for a generic file) or
            ``strict`` (:func:`dynvlm.answers.extract_choice`).

    Returns:
        ``{"pred": index or -1, "letter": what was read, "guessed": bool}``.
    """
    from dynvlm.scoring.answers import extract_choice, letters

    if reading not in READINGS:
        raise ValueError(f"eval.reading={reading!r}; valid: {', '.join(READINGS)}")
    bench = BENCHMARKS.get(str(meta.get("benchmark") or ""))
    options = list(meta.get("options") or [])
    if bench is None or reading == "strict":
        pred = extract_choice(text, len(options), options)
        return {"pred": -1 if pred is None else pred, "letter": "" if pred is None else letters(len(options))[pred],
                "guessed": False}
    got = bench.read(text, meta)
    return {"pred": got.pred, "letter": got.letter, "guessed": got.guessed}


def eval_mode(mode: str, meta: Mapping[str, Any]) -> str:
    """``eval.mode`` for a question: ``auto`` is ``generate`` for a benchmark's question (its task
    generates) and ``loglik`` for dynvlm's own format."""
    if mode != AUTO:
        return mode
    return "generate" if meta.get("benchmark") else "loglik"
