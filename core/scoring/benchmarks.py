"""A benchmark's answers read, and its questions aggregated, as its lmms-eval 0.7.3 task does.

One :class:`TaskScoring` per benchmark of :mod:`dynvlm.data.benchmarks` (the same names): the
local lmms-eval task that scores the same way, its metric key and scale, how its
``process_results`` reads a letter out of an answer (:meth:`TaskScoring.read`, on the rules of
:mod:`dynvlm.scoring.readers`) and how its metric aggregates per-question verdicts
(:meth:`TaskScoring.aggregate`). :func:`read_answer` reads one answer for a question's item meta
(``meta["benchmark"]`` picks the scoring; none: dynvlm's own reading).

``eval.reading: task`` (default) reads answers the task's way; ``strict`` reads them with
:func:`dynvlm.scoring.answers.extract_choice` (no letter inside a word, no random pick, an answer
that is exactly one option's text counts). ``eval.mode: auto`` (:func:`resolve_mode`) generates
for a benchmark's question (its task generates) and scores option letters by likelihood
(``loglik``) for dynvlm's own. See docs/evaluation.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dynvlm.data.benchmarks import AUTO, BENCHMARKS
from dynvlm.data.benchmarks.mlvu import TASK_TYPES
from dynvlm.scoring import readers
from dynvlm.scoring.answers import extract_choice, letters

READINGS = ("task", "strict")


@dataclass(frozen=True)
class Reading:
    """What a benchmark's scoring read from one answer.

    Attributes:
        pred: the option index read (``-1``: none). It may lie beyond the options (PerceptionTest
            reads ``D`` among three): such a pick is never right.
        letter: the letter (or text) lmms-eval logs for this answer (``""``: none).
        guessed: the task picked at random because it read nothing (EgoSchema).
    """

    pred: int
    letter: str
    guessed: bool = False


def letter_index(letter: str) -> int:
    """``"A"`` -> 0, ``"B"`` -> 1 ...; ``-1`` for anything that is not one upper-case letter."""
    return ord(letter) - ord("A") if len(letter) == 1 and "A" <= letter <= "Z" else -1


class TaskScoring:
    """Base class: a task that reads VideoMME-style letters and reports the share right (override what differs).

    Class attributes:
        name: the benchmark (:data:`dynvlm.data.benchmarks.BENCHMARKS`).
        task: the local lmms-eval task (``experiments/lmms_tasks``) that scores the same way.
        metric: that task's metric key in lmms-eval's results.
        scale: lmms-eval reports the metric in percent (100) or as a fraction (1).
    """

    name = ""
    task = ""
    metric = ""
    scale = 1.0

    def reading_text(self, output: str) -> str:
        """The text the task's ``process_results`` sees: the answer after lmms-eval's filters and
        its reasoning-tag stripping."""
        return readers.drop_reasoning(output)

    def read(self, output: str, meta: Mapping[str, Any]) -> Reading:
        """The option the task reads from ``output`` (the model's raw answer) for the item ``meta``."""
        letter = readers.mcq_letter(self.reading_text(output), "ABCD")
        return Reading(letter_index(letter), letter)

    def aggregate(self, rows: Sequence[Mapping[str, Any]]) -> float:
        """The task's metric over per-question rows ``{"correct": bool, "group": str}``, on lmms-eval's
        scale (default: share of questions right)."""
        return self.scale * sum(bool(r["correct"]) for r in rows) / len(rows) if rows else 0.0


class VideoMMEScoring(TaskScoring):
    """VideoMME: the letter ``extract_mcq_answer`` reads among A-D equals ``answer``; percent right."""

    name = "videomme"
    task = "videomme_local"
    metric = "videomme_perception_score"
    scale = 100.0


class MLVUScoring(TaskScoring):
    """MLVU dev: VideoMME's reading; the metric is the mean over the seven task types of each type's
    percentage right, a type without questions counting 0."""

    name = "mlvu"
    task = "mlvu_dev_local"
    metric = "mlvu_percetion_score"  # sic: lmms-eval's key
    scale = 100.0

    def aggregate(self, rows: Sequence[Mapping[str, Any]]) -> float:
        per_type = []
        for kind in TASK_TYPES:
            mine = [r for r in rows if r["group"] == kind]
            per_type.append(100.0 * sum(bool(r["correct"]) for r in mine) / len(mine) if mine else 0.0)
        return sum(per_type) / len(TASK_TYPES)


class EgoSchemaScoring(TaskScoring):
    """EgoSchema: its own reading (:func:`dynvlm.scoring.readers.egoschema_letter`), a random letter
    seeded per question (``meta["task_seed"]``) when it reads none; share right."""

    name = "egoschema"
    task = "egoschema_subset_local"
    metric = "score"

    def read(self, output: str, meta: Mapping[str, Any]) -> Reading:
        letter, guessed = readers.egoschema_letter(self.reading_text(output), meta["task_options"], meta["task_seed"])
        return Reading(letter_index(letter), letter, guessed)


class PerceptionTestScoring(TaskScoring):
    """PerceptionTest: the first of A-D standing as a word of its own equals ``answer_id``'s letter
    (``D`` is never right); share right."""

    name = "perceptiontest"
    task = "perceptiontest_val_mc_local"
    metric = "accuracy"

    def read(self, output: str, meta: Mapping[str, Any]) -> Reading:
        letter = readers.word_letter(self.reading_text(output), "ABCD")
        return Reading(letter_index(letter), letter)


class TempCompassScoring(TaskScoring):
    """TempCompass multi-choice: rule matching (:func:`dynvlm.scoring.readers.tempcompass_letter`); an
    answer the rules cannot match goes to lmms-eval's ChatGPT judge, which without an API key scores
    it 0 — dynvlm scores it 0 as well. Percent right (``avg_accuracy``)."""

    name = "tempcompass"
    task = "tempcompass_multi_choice_local"
    metric = "avg_accuracy"
    scale = 100.0

    def read(self, output: str, meta: Mapping[str, Any]) -> Reading:
        letter, _matched = readers.tempcompass_letter(self.reading_text(output), str(meta["task_answer"]))
        return Reading(letter_index(letter), letter)


class MuirBenchScoring(TaskScoring):
    """MuirBench: the ``flexible-extract`` filter keeps the letter of an answer starting ``"X."`` (else
    the whole answer); it is right when it equals ``answer`` ignoring case and surrounding space.
    Share right."""

    name = "muirbench"
    task = "muirbench_local"
    metric = "muirbench_score_overall"

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


#: every benchmark's scoring, by name
SCORINGS: dict[str, TaskScoring] = {s.name: s for s in (VideoMMEScoring(), MLVUScoring(), EgoSchemaScoring(),
                                                        PerceptionTestScoring(), TempCompassScoring(),
                                                        MuirBenchScoring())}
assert set(SCORINGS) == set(BENCHMARKS), "every benchmark of dynvlm.data.benchmarks needs its scoring"


def read_answer(text: str, meta: Mapping[str, Any], reading: str = "task") -> dict[str, Any]:
    """The option an answer picks, for a question's item ``meta``.

    Args:
        text: the model's answer.
        meta: the sample's meta (``options``; for a benchmark's question also ``benchmark`` and
            what :meth:`dynvlm.data.benchmarks.base.Benchmark.extras` stored).
        reading: ``task`` (the benchmark's lmms-eval reading; dynvlm's own for a generic file) or
            ``strict`` (:func:`dynvlm.scoring.answers.extract_choice`).

    Returns:
        ``{"pred": index or -1, "letter": what was read, "guessed": bool}``.
    """
    if reading not in READINGS:
        raise ValueError(f"eval.reading={reading!r}; valid: {', '.join(READINGS)}")
    scoring = SCORINGS.get(str(meta.get("benchmark") or ""))
    options = list(meta.get("options") or [])
    if scoring is None or reading == "strict":
        pred = extract_choice(text, len(options), options)
        return {"pred": -1 if pred is None else pred, "letter": "" if pred is None else letters(len(options))[pred],
                "guessed": False}
    got = scoring.read(text, meta)
    return {"pred": got.pred, "letter": got.letter, "guessed": got.guessed}


def resolve_mode(mode: str, meta: Mapping[str, Any]) -> str:
    """``eval.mode`` for a question with item meta ``meta``: ``auto`` is ``generate`` for a benchmark's
    question (its task generates) and ``loglik`` for dynvlm's own format; any other mode is itself."""
    if mode != AUTO:
        return mode
    return "generate" if meta.get("benchmark") else "loglik"
