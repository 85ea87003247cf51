"""What one benchmark's file is to dynvlm: its record shape and its lmms-eval task's prompt.

A :class:`Benchmark` turns a record of the benchmark's file (the fields of its lmms-eval 0.7.3
dataset) into an :class:`~dynvlm.records.MCQuestion` plus what its task needs later
(:meth:`Benchmark.extras`: the answer as the task compares it, the aggregation key, ...), and
writes the task's ``doc_to_text`` (:meth:`Benchmark.prompt`). How the task reads an answer and
aggregates the verdicts is scoring: :mod:`dynvlm.scoring.benchmarks`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynvlm.data.annotations import AnnotationError, mc_question
from dynvlm.records import MCQuestion


class Benchmark:
    """Base class: a benchmark's records and prompt (override what differs).

    Class attributes:
        name: dynvlm's name (``data.benchmark``; ``meta["benchmark"]`` of its items).
        pre_prompt: the task's default ``pre_prompt`` (``lmms_eval_specific_kwargs.default``).
        post_prompt: the task's default ``post_prompt``.
    """

    name = ""
    pre_prompt = ""
    post_prompt = ""

    def detect(self, record: Mapping[str, Any]) -> bool:
        """Whether ``record`` has this benchmark's shape."""
        raise NotImplementedError

    def question(self, record: dict[str, Any], where: str) -> MCQuestion:
        """The record as an :class:`MCQuestion`; raises :class:`AnnotationError` naming ``where`` and the key."""
        self.check(record, where)
        return mc_question(record, where)

    def check(self, record: Mapping[str, Any], where: str) -> None:
        """Raise :class:`AnnotationError` for a field the task cannot score (default: none)."""

    def require(self, record: Mapping[str, Any], where: str, *keys: str) -> None:
        """Raise :class:`AnnotationError` naming the first of ``keys`` that ``record`` lacks (or has empty)."""
        for key in keys:
            if record.get(key) in (None, ""):
                raise AnnotationError(where, f"{self.name} record needs {key!r} (its lmms-eval task reads it)")

    def extras(self, record: Mapping[str, Any], question: MCQuestion) -> dict[str, Any]:
        """Item meta the reading and aggregation need later (JSON-able): ``task_answer`` (the
        record's answer as the task compares it) and ``task_group`` (the aggregation key)."""
        return {"task_answer": record.get("answer"), "task_group": question.category}

    def prompt(self, record: Mapping[str, Any], question: MCQuestion) -> str:
        """The task's ``doc_to_text`` of ``record`` with its default pre- and post-prompt."""
        raise NotImplementedError
