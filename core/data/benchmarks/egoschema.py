"""EgoSchema subset (lmms-eval task ``egoschema_subset``; local ``egoschema_subset_local``).

Record: ``video_idx`` (file stem), ``question_idx``, ``question``, ``option`` (five strings
``"A. ..."``), ``answer`` (the right option's index, ``"0"``..``"4"``). Its task reads the answer
its own way and, when it finds no letter, picks one at random: seeded per question
(:func:`seed_of`, stored as ``meta["task_seed"]``) on both sides so the pick is the same
(:class:`dynvlm.scoring.benchmarks.EgoSchemaScoring`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynvlm.data.annotations import AnnotationError
from dynvlm.data.benchmarks.base import Benchmark
from dynvlm.records import MCQuestion


def seed_of(record: Mapping[str, Any]) -> str:
    """The random seed of a question's EgoSchema fallback pick: its video and question index."""
    return f"egoschema/{record.get('video_idx', record.get('q_uid'))}/{record.get('question_idx', '')}"


class EgoSchema(Benchmark):
    """EgoSchema files and prompt, as its lmms-eval task reads them."""

    name = "egoschema"
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


BENCHMARK = EgoSchema()
