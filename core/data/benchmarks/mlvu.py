"""MLVU dev (lmms-eval task ``mlvu_dev``; local ``mlvu_dev_local``).

Record: ``video_name`` (file name with suffix), ``question`` with its options as embedded lines
``"(A) ..."``, ``answer`` (letter), ``task_type`` (one of :data:`TASK_TYPES`), ``duration``
(seconds of the *source* video, not of the clip: never used for planning). ``candidates`` may
list the options too; they are embedded once. Reading and metric (the mean over the seven task
types): :class:`dynvlm.scoring.benchmarks.MLVUScoring`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynvlm.data.annotations import LETTERS, AnnotationError
from dynvlm.data.benchmarks.base import Benchmark
from dynvlm.records import MCQuestion

TASK_TYPES = ("anomaly_reco", "count", "ego", "needle", "order", "plotQA", "topic_reasoning")


def task_question(record: Mapping[str, Any]) -> str:
    """The question as the MLVU task shows it: with its ``(A) ...`` lines, added from ``candidates``
    when the record's question does not hold them."""
    question = str(record["question"])
    candidates = record.get("candidates")
    if isinstance(candidates, list | tuple) and "(A)" not in question:
        question += "".join(f"\n({LETTERS[i]}) {c}" for i, c in enumerate(candidates))
    return question


class MLVU(Benchmark):
    """MLVU dev files and prompt, as its lmms-eval task reads them."""

    name = "mlvu"
    post_prompt = "\nOnly give the best option.\nBest option: ("

    def detect(self, record: Mapping[str, Any]) -> bool:
        return "task_type" in record and "video_name" in record and "options" not in record

    def check(self, record: Mapping[str, Any], where: str) -> None:
        self.require(record, where, "video_name", "question", "answer")
        if record.get("task_type") not in TASK_TYPES:
            raise AnnotationError(where, f"mlvu 'task_type' is {record.get('task_type')!r}; valid: {', '.join(TASK_TYPES)}")

    def question(self, record: dict[str, Any], where: str) -> MCQuestion:
        q = super().question(record, where)
        # the source video's length is not the clip's: kept under its own name only
        q.meta["source_duration"] = q.meta.pop("duration", None)
        return q

    def extras(self, record: Mapping[str, Any], question: MCQuestion) -> dict[str, Any]:
        return {"task_answer": record.get("answer"), "task_group": str(record["task_type"])}

    def prompt(self, record: Mapping[str, Any], question: MCQuestion) -> str:
        return f"{self.pre_prompt}{task_question(record)}{self.post_prompt}"


BENCHMARK = MLVU()
