"""TempCompass, multiple choice (lmms-eval ``tempcompass_multi_choice``; local
``tempcompass_multi_choice_local``).

Record: ``video_id`` (file stem), ``question`` with its options as embedded lines ``"A. ..."``,
``answer`` (the whole right option, ``"B. left"``), ``dim`` (``action``, ``speed``,
``direction``, ``order``, ``attribute_change``). Reading (rule matching; no judge) and metric:
:class:`dynvlm.scoring.benchmarks.TempCompassScoring`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynvlm.data.benchmarks.base import Benchmark
from dynvlm.records import MCQuestion


class TempCompass(Benchmark):
    """TempCompass multi-choice files and prompt, as its lmms-eval task reads them."""

    name = "tempcompass"
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


BENCHMARK = TempCompass()
