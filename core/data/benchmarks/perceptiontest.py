"""PerceptionTest validation, multiple choice (lmms-eval ``perceptiontest_val_mc``; local
``perceptiontest_val_mc_local``).

Record: ``video_name`` (file stem), ``question``, ``options`` (three), ``answer_id``, ``area``,
``reasoning``, ``tag`` (or the published ``mc_question_valid.json``, keyed by video). Reading
and metric: :class:`dynvlm.scoring.benchmarks.PerceptionTestScoring`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynvlm.data.benchmarks.base import Benchmark
from dynvlm.records import MCQuestion


class PerceptionTest(Benchmark):
    """PerceptionTest files and prompt, as its lmms-eval task reads them."""

    name = "perceptiontest"
    post_prompt = "\nAnswer with the option's letter from the given choices directly."

    def detect(self, record: Mapping[str, Any]) -> bool:
        return "video_name" in record and "options" in record and "answer_id" in record

    def extras(self, record: Mapping[str, Any], question: MCQuestion) -> dict[str, Any]:
        return {"task_answer": record.get("answer_id"), "task_group": str(record.get("area") or "")}

    def prompt(self, record: Mapping[str, Any], question: MCQuestion) -> str:
        # the task letters the first two options A and B and every later one C
        lines = "".join(f"\n{'AB'[i] if i < 2 else 'C'}. {o}" for i, o in enumerate(record["options"]))
        return f"{self.pre_prompt}{record['question']}{lines}{self.post_prompt}"


BENCHMARK = PerceptionTest()
