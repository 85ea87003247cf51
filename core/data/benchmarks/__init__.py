"""The paper's multiple-choice benchmarks' files: each read as its lmms-eval 0.7.3 task reads it.

One module per benchmark (:mod:`.videomme`, :mod:`.mlvu`, :mod:`.egoschema`,
:mod:`.perceptiontest`, :mod:`.tempcompass`, :mod:`.muirbench`) states its record fields and its
task's prompt (``doc_to_text`` with the default pre- and post-prompt). ``dynvlm eval`` finds the
benchmark of a file by its records' fields (``data.benchmark: auto``) or by name; ``generic`` is
dynvlm's own format (:func:`dynvlm.data.annotations.format_mc`). Each item of a benchmark's file
carries ``meta["benchmark"]`` and what its task's reading needs; the reading and the task's
metric are :mod:`dynvlm.scoring.benchmarks`. See docs/evaluation.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dynvlm.data.annotations import Item, mc_item, parse_records
from dynvlm.data.benchmarks.base import Benchmark
from dynvlm.data.benchmarks.egoschema import BENCHMARK as EGOSCHEMA
from dynvlm.data.benchmarks.mlvu import BENCHMARK as MLVU
from dynvlm.data.benchmarks.muirbench import BENCHMARK as MUIRBENCH
from dynvlm.data.benchmarks.perceptiontest import BENCHMARK as PERCEPTIONTEST
from dynvlm.data.benchmarks.tempcompass import BENCHMARK as TEMPCOMPASS
from dynvlm.data.benchmarks.videomme import BENCHMARK as VIDEOMME
from dynvlm.data.images import IMAGES_KIND

#: detection order: the first whose shape a record has
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (MUIRBENCH, TEMPCOMPASS, VIDEOMME, EGOSCHEMA, PERCEPTIONTEST, MLVU)}
GENERIC = "generic"
AUTO = "auto"

__all__ = ["AUTO", "BENCHMARKS", "GENERIC", "Benchmark", "benchmark_items", "benchmark_named", "detect_benchmark",
           "resolve_benchmark"]


def benchmark_named(name: str) -> Benchmark | None:
    """The benchmark called ``name`` (``None`` for ``generic``).

    Raises:
        ValueError: ``name`` is none of them, listing the valid names.
    """
    if name == GENERIC:
        return None
    if name not in BENCHMARKS:
        raise ValueError(f"data.benchmark={name!r}; valid: {AUTO}, {GENERIC}, {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def detect_benchmark(record: Mapping[str, Any]) -> Benchmark | None:
    """The benchmark whose record shape ``record`` has (``None``: dynvlm's generic format)."""
    return next((b for b in BENCHMARKS.values() if b.detect(record)), None)


def resolve_benchmark(name: str, record: Mapping[str, Any] | None) -> Benchmark | None:
    """``data.benchmark`` (``name``) for a file whose first record is ``record``: ``auto`` detects it
    (``None`` without records), ``generic`` is ``None``, else the named benchmark."""
    if name == AUTO:
        return detect_benchmark(record) if record is not None else None
    return benchmark_named(name)


def benchmark_items(bench: Benchmark, records: list[tuple[str, dict[str, Any]]], on_error: str,
                    path: Path) -> tuple[list[Item], list[tuple[str, str]]]:
    """A benchmark's records -> eval items with its task's prompt and the meta its reading needs.

    Args:
        bench: the file's benchmark.
        records: ``(where, record)`` pairs (:func:`dynvlm.data.annotations.read_records`).
        on_error: ``raise`` or ``skip`` (a bad record is then listed).
        path: the annotation file (embedded images name it as their media).

    Returns:
        ``(items, problems)``; each item's meta adds ``benchmark`` and :meth:`Benchmark.extras`.
    """

    def parse(rec: dict[str, Any], where: str) -> Item:
        q = bench.question(rec, where)
        item = mc_item(q, where=where, prompt=bench.prompt(rec, q))
        item.meta.update(bench.extras(rec, q), benchmark=bench.name)
        if item.kind == IMAGES_KIND and not item.media:
            # embedded images live in the annotation file: it is the media whose presence is checked
            first = q.meta["images"][0]
            item.media = first if isinstance(first, str) else str(path.resolve())
        return item

    items, problems = parse_records(records, on_error, parse)
    return [i for i, _ in items], problems
