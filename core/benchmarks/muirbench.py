"""MuirBench (lmms-eval task ``muirbench``; local ``muirbench_local``): several images per question.

Record: ``idx``, ``task``, ``image_relation``, ``image_type``, ``question``, ``options`` (texts),
``answer`` (letter), ``image_list`` (images: parquet image cells ``{"bytes", "path"}``, or paths
relative to the file's folder). No video, no timestamps: the images are one multi-image sample
(:mod:`dynvlm.benchmarks.images`). Scoring: the ``flexible-extract`` filter keeps the letter of
an answer starting ``"X."`` (else the whole answer); it is right when it equals ``answer``
ignoring case and surrounding space. The metric is the share right over every question.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..data.annotations import LETTERS, AnnotationError
from ..records import MCQuestion
from . import readers
from .base import Benchmark, Reading, letter_index


class MuirBench(Benchmark):
    """MuirBench as its lmms-eval task scores it."""

    name = "muirbench"
    task = "muirbench_local"
    metric = "muirbench_score_overall"
    scale = 1.0
    post_prompt = "\nAnswer with the option's letter from the given choices directly."
    filtered = True

    def detect(self, record: Mapping[str, Any]) -> bool:
        return "image_list" in record and "options" in record

    def question(self, record: dict[str, Any], where: str) -> MCQuestion:
        self.require(record, where, "question", "answer", "task")
        options, images = record.get("options"), record.get("image_list")
        if not isinstance(options, list | tuple) or not options:
            raise AnnotationError(where, "muirbench 'options' must be a non-empty list of option texts")
        if not isinstance(images, list | tuple) or not images:
            raise AnnotationError(where, "muirbench 'image_list' must be a non-empty list of images")
        answer = str(record["answer"]).strip().upper()
        if answer not in LETTERS[: len(options)]:
            raise AnnotationError(where, f"muirbench 'answer' is {record['answer']!r}; valid: "
                                         f"{', '.join(LETTERS[: len(options)])}")
        meta = {k: v for k, v in record.items() if k not in ("question", "options", "answer", "image_list")}
        meta["images"] = list(images)
        return MCQuestion(str(record.get("idx", where)), "", str(record["question"]), [str(o) for o in options],
                          LETTERS.index(answer), str(record["task"]), meta)

    def extras(self, record: Mapping[str, Any], question: MCQuestion) -> dict[str, Any]:
        return {"task_answer": str(record["answer"]), "task_group": str(record["task"])}

    def prompt(self, record: Mapping[str, Any], question: MCQuestion) -> str:
        choices = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(record["options"]))
        return f"{self.pre_prompt}{record['question']}\n{choices}{self.post_prompt}"

    def reading_text(self, output: str) -> str:
        # the task's filter reads the raw answer; lmms-eval strips reasoning tags after it
        return readers.drop_reasoning(readers.muirbench_filtered(output))

    def read(self, output: str, meta: Mapping[str, Any]) -> Reading:
        text = self.reading_text(output)
        answer = str(meta["task_answer"]).strip()
        right = text.lower().strip() == answer.lower()
        # the task compares text, not letters: a reading is the answer's letter only when it matches
        pred = letter_index(answer.upper()) if right else letter_index(text.strip().upper())
        return Reading(pred if pred >= 0 else -1, text)


BENCHMARK = MuirBench()
