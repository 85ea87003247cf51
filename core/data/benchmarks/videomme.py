"""VideoMME (lmms-eval task ``videomme``; local ``videomme_local``).

Record: ``videoID``, ``question_id``, ``question``, ``options`` (``["A. ...", ...]``), ``answer``
(letter), ``duration`` (the video's length *class*: ``short``/``medium``/``long``, not seconds),
``domain``, ``sub_category``, ``task_type``. Reading and metric:
:class:`dynvlm.scoring.benchmarks.VideoMMEScoring`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynvlm.data.annotations import AnnotationError
from dynvlm.data.benchmarks.base import Benchmark
from dynvlm.records import MCQuestion

DURATIONS = ("short", "medium", "long")
OPTION_PROMPT = ("Select the best answer to the following multiple-choice question based on the video and the "
                 "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.")


class VideoMME(Benchmark):
    """VideoMME files and prompt, as its lmms-eval task reads them."""

    name = "videomme"
    post_prompt = "\nAnswer with the option's letter from the given choices directly."

    def detect(self, record: Mapping[str, Any]) -> bool:
        return "videoID" in record and "options" in record

    def check(self, record: Mapping[str, Any], where: str) -> None:
        self.require(record, where, "videoID", "options", "domain", "sub_category", "task_type")
        if record.get("duration") not in DURATIONS:
            raise AnnotationError(where, f"videomme 'duration' is {record.get('duration')!r}; valid: "
                                         f"{', '.join(DURATIONS)} (the length class, not seconds)")

    def extras(self, record: Mapping[str, Any], question: MCQuestion) -> dict[str, Any]:
        return {"task_answer": record.get("answer"), "task_group": str(record["duration"]),
                "duration_class": str(record["duration"])}

    def prompt(self, record: Mapping[str, Any], question: MCQuestion) -> str:
        options = "\n".join(str(o) for o in record["options"])
        return f"{OPTION_PROMPT}\n{record['question']}\n{options}\n{self.post_prompt}"


BENCHMARK = VideoMME()
