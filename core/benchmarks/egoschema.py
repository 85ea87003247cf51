"""EgoSchema subset (lmms-eval task ``egoschema_subset``; local ``egoschema_subset_local``).

Record: ``video_idx`` (file stem), ``question_idx``, ``question``, ``option`` (five strings
``"A. ..."``), ``answer`` (the right option's index, ``"0"``..``"4"``). Scoring: EgoSchema's own
reading (:func:`dynvlm.benchmarks.readers.egoschema_letter`); when it finds no letter it picks
one at random, seeded per question (:func:`seed_of`) on both sides so the pick is the same. The
metric is the share right over every question.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..data.annotations import AnnotationError
from ..records import MCQuestion
from . import readers
from .base import Benchmark, Reading, letter_index


def seed_of(record: Mapping[str, Any]) -> str:
    """The random seed of a question's EgoSchema fallback pick: its video and question index."""
    return f"egoschema/{record.get('video_idx', record.get('q_uid'))}/{record.get('question_idx', '')}"


class EgoSchema(Benchmark):
    """EgoSchema as its lmms-eval task scores it."""

    name = "egoschema"
    task = "egoschema_subset_local"
    metric = "score"
    scale = 1.0
    post_prompt = "\nAnswer with the option's letter from the given choices directly."

    def detect(self, record: Mapping[str, Any]) -> bool:
        return isinstance(record.get("option"), list | tuple) and ("video_idx" in record or "q_uid" in record)

    def check(self, record: Mapping[str, Any], where: str) -> None:
        self.require(record, where, "question", "answer")
        if len(record["option"]) != 5:
            raise AnnotationError(where, f"egoschema 'option' holds {len(record['option'])} options; its task reads 5")

    def extras(self, record: Mapping[str, Any], question: MCQuestion) -> dict[str, Any]:
        return {"task_answer": record.get("answer"), "task_group": "",
                "task_options": [str(o).strip() for o in record["option"]], "task_seed": seed_of(record)}

    def prompt(self, record: Mapping[str, Any], question: MCQuestion) -> str:
        options = "".join(f"\n{o}" for o in record["option"])
        return f"{self.pre_prompt}{record['question']}{options}{self.post_prompt}"

    def read(self, output: str, meta: Mapping[str, Any]) -> Reading:
        letter, guessed = readers.egoschema_letter(self.reading_text(output), meta["task_options"], meta["task_seed"])
        return Reading(letter_index(letter), letter, guessed)


BENCHMARK = EgoSchema()
