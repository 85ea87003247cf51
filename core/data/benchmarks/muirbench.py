"""MuirBench (lmms-eval task ``muirbench``; local ``muirbench_local``): several images per question.

Record: ``idx``, ``task``, ``image_relation``, ``image_type``, ``question``, ``options`` (texts),
``answer`` (letter), ``image_list`` (images: parquet image cells ``{"bytes", "path"}``, or paths
relative to the file's folder). No video, no timestamps: the images are one multi-image sample
(:mod:`dynvlm.data.images`). Reading (its ``flexible-extract`` filter, then a text comparison)
and metric: :class:`dynvlm.scoring.benchmarks.MuirBenchScoring`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynvlm.data.annotations import LETTERS, AnnotationError
from dynvlm.data.benchmarks.base import Benchmark
from dynvlm.records import MCQuestion


class MuirBench(Benchmark):
    """MuirBench files and prompt, as its lmms-eval task reads them."""

    name = "muirbench"
    post_prompt = "\nAnswer with the option's letter from the given choices directly."

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


BENCHMARK = MuirBench()
