"""What one benchmark is to dynvlm: its record shape, its lmms-eval task's prompt, reading and score.

A :class:`Benchmark` turns a record of the benchmark's file (the fields of its lmms-eval 0.7.3
dataset) into an :class:`~dynvlm.records.MCQuestion` plus what its task needs later
(:meth:`Benchmark.extras`), writes the task's ``doc_to_text`` (:meth:`Benchmark.prompt`), reads
a letter from an answer the way the task's ``process_results`` does (:meth:`Benchmark.read`) and
aggregates per-question verdicts the way the task's metric does (:meth:`Benchmark.aggregate`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..data.annotations import AnnotationError, mc_question
from ..records import MCQuestion
from . import readers


@dataclass(frozen=True)
class Reading:
    """What a benchmark's scoring read from one answer.

    Attributes:
        pred: the option index read (``-1``: none). It may lie beyond the options (PerceptionTest
            reads ``D`` among three): such a pick is never right.
        letter: the letter (or text) lmms-eval logs for this answer (``""``: none).
        guessed: the task picked at random because it read nothing (EgoSchema).
    """

    pred: int
    letter: str
    guessed: bool = False


def letter_index(letter: str) -> int:
    """``"A"`` -> 0, ``"B"`` -> 1 ...; ``-1`` for anything that is not one upper-case letter."""
    return ord(letter) - ord("A") if len(letter) == 1 and "A" <= letter <= "Z" else -1


class Benchmark:
    """Base class: a benchmark whose task reads VideoMME-style letters (override what differs).

    Class attributes:
        name: dynvlm's name (``data.benchmark``).
        task: the local lmms-eval task (``experiments/lmms_tasks``) that scores the same way.
        metric: that task's metric key in lmms-eval's results.
        scale: lmms-eval reports the metric in percent (100) or as a fraction (1).
        post_prompt: the task's default ``post_prompt`` (``lmms_eval_specific_kwargs.default``).
        filtered: the task runs a filter that reads the answer before reasoning tags are
            stripped (MuirBench's ``flexible-extract``).
    """

    name = ""
    task = ""
    metric = ""
    scale = 1.0
    pre_prompt = ""
    post_prompt = ""
    filtered = False

    # -- records -------------------------------------------------------------------------------
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
        """Raise naming the first of ``keys`` the record lacks."""
        for key in keys:
            if record.get(key) in (None, ""):
                raise AnnotationError(where, f"{self.name} record needs {key!r} (its lmms-eval task reads it)")

    def extras(self, record: Mapping[str, Any], question: MCQuestion) -> dict[str, Any]:
        """Item meta the reading and aggregation need later (JSON-able): ``task_answer`` (the
        record's answer as the task compares it) and ``task_group`` (the aggregation key)."""
        return {"task_answer": record.get("answer"), "task_group": question.category}

    # -- prompt --------------------------------------------------------------------------------
    def prompt(self, record: Mapping[str, Any], question: MCQuestion) -> str:
        """The task's ``doc_to_text`` of ``record`` with its default pre- and post-prompt."""
        raise NotImplementedError

    # -- reading -------------------------------------------------------------------------------
    def reading_text(self, output: str) -> str:
        """The text the task's ``process_results`` sees: the answer after lmms-eval's filters and
        its reasoning-tag stripping."""
        return readers.drop_reasoning(output)

    def read(self, output: str, meta: Mapping[str, Any]) -> Reading:
        """The option the task reads from ``output`` (the model's raw answer)."""
        letter = readers.mcq_letter(self.reading_text(output), "ABCD")
        return Reading(letter_index(letter), letter)

    # -- aggregation ---------------------------------------------------------------------------
    def aggregate(self, rows: Sequence[Mapping[str, Any]]) -> float:
        """The task's metric over per-question rows ``{"correct": bool, "group": str}``, on lmms-eval's
        scale (default: share of questions right)."""
        return self.scale * sum(bool(r["correct"]) for r in rows) / len(rows) if rows else 0.0
