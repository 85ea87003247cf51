"""PerceptionTest validation, multiple choice (lmms-eval ``perceptiontest_val_mc``; local
``perceptiontest_val_mc_local``).

Record: ``video_name`` (file stem), ``question``, ``options`` (three), ``answer_id``, ``area``,
``reasoning``, ``tag`` (or the published ``mc_question_valid.json``, keyed by video). Scoring:
the first of A-D standing as a word of its own equals ``answer_id``'s letter (``D`` is never
right); the metric is the share right over every question.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..records import MCQuestion
from . import readers
from .base import Benchmark, Reading, letter_index


class PerceptionTest(Benchmark):
    """PerceptionTest as its lmms-eval task scores it."""

    name = "perceptiontest"
    task = "perceptiontest_val_mc_local"
    metric = "accuracy"
    scale = 1.0
    post_prompt = "\nAnswer with the option's letter from the given choices directly."

    def detect(self, record: Mapping[str, Any]) -> bool:
        return "video_name" in record and "options" in record and "answer_id" in record

    def extras(self, record: Mapping[str, Any], question: MCQuestion) -> dict[str, Any]:
        return {"task_answer": record.get("answer_id"), "task_group": str(record.get("area") or "")}

    def prompt(self, record: Mapping[str, Any], question: MCQuestion) -> str:
        # the task letters the first two options A and B and every later one C
        lines = "".join(f"\n{'AB'[i] if i < 2 else 'C'}. {o}" for i, o in enumerate(record["options"]))
        return f"{self.pre_prompt}{record['question']}{lines}{self.post_prompt}"

    def read(self, output: str, meta: Mapping[str, Any]) -> Reading:
        letter = readers.word_letter(self.reading_text(output), "ABCD")
        return Reading(letter_index(letter), letter)


BENCHMARK = PerceptionTest()
