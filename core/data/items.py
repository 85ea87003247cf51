"""Any annotation file -> the items a dataset decodes.

A training file (LLaVA style) gives its conversations; a multiple-choice file gives eval items,
in dynvlm's own prompt (:func:`dynvlm.data.annotations.mc_item`) or, when its records are one
benchmark's (``data.benchmark``), in that benchmark's lmms-eval prompt with the meta its task's
reading needs (:mod:`dynvlm.data.benchmarks`).
"""

from __future__ import annotations

from pathlib import Path

from dynvlm.data.annotations import (
    MC_INSTRUCTION,
    Item,
    check_on_error,
    is_mc_file,
    llava_item,
    mc_item,
    mc_question,
    parse_records,
    read_records,
)
from dynvlm.data.benchmarks import AUTO, benchmark_items, resolve_benchmark


def read_items(path: str | Path, on_error: str = "raise", instruction: str = MC_INSTRUCTION,
               benchmark: str = AUTO) -> tuple[list[Item], list[tuple[str, str]], bool]:
    """Any supported annotation file -> ``(items, problems, is_mc)``; MC questions become eval items.

    Args:
        path: a JSON, JSONL or parquet annotation file.
        on_error: ``raise`` on the first bad record, or ``skip`` it (listed in ``problems``).
        instruction: the line after the options in dynvlm's own prompt (``data.mc_instruction``).
        benchmark: ``data.benchmark``: ``auto`` recognises a benchmark's records by their fields,
            whose questions then get the benchmark's own prompt and reading (``meta["benchmark"]``);
            ``generic`` uses dynvlm's format; a benchmark's name forces it.

    Returns:
        ``(items, problems, is_mc)``: the items, ``(where, reason)`` per skipped record, and whether
        the file holds multiple-choice questions.
    """
    check_on_error(on_error)
    bad: list[tuple[str, str]] = []
    records = read_records(path, bad if on_error == "skip" else None)
    if is_mc_file(records):
        bench = resolve_benchmark(benchmark, records[0][1] if records else None)
        if bench is not None:
            items, problems = benchmark_items(bench, records, on_error, Path(path))
            return items, bad + problems, True
        qs, problems = parse_records(records, on_error, mc_question)
        return [mc_item(q, instruction, where) for q, where in qs], bad + problems, True
    parsed, problems = parse_records(records, on_error, llava_item)
    return [i for i, _ in parsed], bad + problems, False
