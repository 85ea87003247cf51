"""TempCompass, multiple choice (lmms-eval ``tempcompass_multi_choice``; local
``tempcompass_multi_choice_local``).

Record: ``video_id`` (file stem), ``question`` with its options as embedded lines ``"A. ..."``,
``answer`` (the whole right option, ``"B. left"``), ``dim`` (``action``, ``speed``,
``direction``, ``order``, ``attribute_change``). Scoring: rule matching
(:func:`dynvlm.benchmarks.readers.tempcompass_letter`); an answer the rules cannot match goes to
lmms-eval's ChatGPT judge, which without an API key scores it 0 — dynvlm scores it 0 as well.
The metric (``avg_accuracy``) is the percentage right over every question.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..records import MCQuestion
from . import readers
from .base import Benchmark, Reading, letter_index


class TempCompass(Benchmark):
    """TempCompass multi-choice as its lmms-eval task scores it."""

    name = "tempcompass"
    task = "tempcompass_multi_choice_local"
    metric = "avg_accuracy"
    scale = 100.0
    post_prompt = "\nPlease directly give the best option:"

    def detect(self, record: Mapping[str, Any]) -> bool:
        return "video_id" in record and "dim" in record

    def check(self, record: Mapping[str, Any], where: str) -> None:
        self.require(record, where, "question", "answer", "dim")

    def question(self, record: dict[str, Any], where: str) -> MCQuestion:
        self.check(record, where)
        # the answer is the whole option ("B. left"): its letter names it among the embedded lines
        return super().question({**record, "answer": str(record["answer"])[:1]}, where)

    def extras(self, record: Mapping[str, Any], question: MCQuestion) -> dict[str, Any]:
        return {"task_answer": str(record["answer"]), "task_group": str(record["dim"])}

    def prompt(self, record: Mapping[str, Any], question: MCQuestion) -> str:
        return f"{self.pre_prompt}{record['question']}{self.post_prompt}"

    def read(self, output: str, meta: Mapping[str, Any]) -> Reading:
        letter, _matched = readers.tempcompass_letter(self.reading_text(output), str(meta["task_answer"]))
        return Reading(letter_index(letter), letter)


BENCHMARK = TempCompass()
