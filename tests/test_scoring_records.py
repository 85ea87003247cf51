"""dynvlm.scoring.records: records from a model's answers, unique per question, and the metrics they add up to.

The model side is exercised in test_model.py with a real VideoLLM; here a stand-in answerer gives
fixed answers so the bookkeeping is checked exactly.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dynvlm.records import Sample, Turn, VisualUsage
from dynvlm.scoring.records import accuracy_metrics, mc_records, open_records, unique_records, usage_summary


def _sample(i: int, category: str, answer: int | None, options=("red", "green", "blue"), groups=None) -> Sample:
    meta = {"question_id": f"q{i}", "category": category, "options": list(options), "answer": answer}
    if groups is not None:
        meta["evidence_groups"] = groups
    return Sample(torch.zeros(2, 4, 4, 3, dtype=torch.uint8), [0.0, 1.0], [Turn("human", "<video> ?"), Turn("gpt", "A")],
                  id=f"s{i}", meta=meta)


class Answerer:
    """Answers with fixed texts and option scores; every sample kept 2 frames of 4 tokens."""

    def __init__(self, texts: list[str], scores: list[list[float]]) -> None:
        self.texts, self.scores = texts, scores

    def _usage(self, n: int) -> list[VisualUsage]:
        return [VisualUsage(8, [0.0, 1.0], actual_tokens=8) for _ in range(n)]

    def generate(self, samples):
        return SimpleNamespace(texts=self.texts[: len(samples)], usage=self._usage(len(samples)))

    def score_options(self, samples, *, cloze=False):
        return SimpleNamespace(scores=self.scores[: len(samples)], usage=self._usage(len(samples)))


def test_loglik_records_pick_the_best_scored_option_and_carry_usage_and_ceilings():
    samples = [_sample(0, "colour", 1, groups=[[0.0]]), _sample(1, "colour", 2, groups=[[5.0]])]
    records = mc_records(Answerer([], [[0.0, 1.0, -1.0], [3.0, 0.0, 0.0]]), samples, "loglik")
    assert [r["pred"] for r in records] == [1, 0]
    assert [(r["planned_tokens"], r["actual_tokens"], r["frames"]) for r in records] == [(8, 8, 2)] * 2
    # evidence at 0 s is in a kept frame; at 5 s it is not: chance with 3 options
    assert [r["ceiling"] for r in records] == [1.0, pytest.approx(1 / 3)]


def test_generated_answers_are_read_for_a_letter_and_unreadable_ones_are_wrong():
    samples = [_sample(0, "c", 1), _sample(1, "c", 0)]
    records = mc_records(Answerer(["The answer is B.", "no idea"], []), samples, "generate")
    assert [r["pred"] for r in records] == [1, -1] and records[0]["text"] == "The answer is B."


def test_auto_mode_scores_dynvlm_files_by_likelihood_and_benchmark_questions_by_their_task():
    """eval.mode auto: dynvlm's own questions (no meta["benchmark"]) are scored exactly as loglik (the
    synthetic files' accuracies do not move); a benchmark's question is generated and read by its task's
    rule (VideoMME reads "Answer unclear" as A, where extract_choice reads nothing), with its group kept."""
    answerer = Answerer([], [[0.0, 1.0, -1.0], [3.0, 0.0, 0.0]])
    generic = [_sample(0, "colour", 1), _sample(1, "colour", 2)]
    auto, loglik = mc_records(answerer, generic, "auto"), mc_records(answerer, generic, "loglik")
    assert auto == loglik and [r["pred"] for r in auto] == [1, 0] and [r["letter"] for r in auto] == ["B", "A"]
    assert not any("benchmark" in r or "guessed" in r for r in auto)
    bench = _sample(2, "c", 0, options=("red", "green", "blue", "black"))
    bench.meta.update(benchmark="videomme", task_answer="A", task_group="short")
    (task,) = mc_records(Answerer(["Answer unclear"], []), [bench], "auto")
    (strict,) = mc_records(Answerer(["Answer unclear"], []), [bench], "auto", reading="strict")
    assert (task["pred"], task["letter"], task["benchmark"], task["group"]) == (0, "A", "videomme", "short")
    assert (strict["pred"], strict["letter"]) == (-1, "")


def test_open_records_exact_match_the_last_answer_and_skip_mc_samples():
    open_sample = Sample(torch.zeros(1, 4, 4, 3, dtype=torch.uint8), [0.0],
                         [Turn("human", "<video> colour ?"), Turn("gpt", "red")], id="o", meta={"category": "x"})
    records = open_records(Answerer(["Red"], []), [open_sample, _sample(0, "c", 0)])
    assert [(r["question_id"], r["kind"]) for r in records] == [("o", "open")]
    assert records[0]["correct"] == (records[0]["text"].strip().lower() == "red")


def test_metrics_are_means_overall_and_per_category_over_unique_questions():
    records = [
        {"kind": "mc", "question_id": "a", "category": "x", "pred": 1, "answer": 1, "planned_tokens": 8,
         "actual_tokens": 8, "frames": 2},
        {"kind": "mc", "question_id": "b", "category": "y", "pred": 0, "answer": 1, "planned_tokens": 4,
         "actual_tokens": 4, "frames": 1},
        {"kind": "mc", "question_id": "a", "category": "x", "pred": 0, "answer": 1},  # a repeat: dropped
    ]
    unique = unique_records(records)
    assert len(unique) == 2
    metrics = accuracy_metrics("test", unique)
    assert metrics == {"test/acc": 0.5, "test/acc/x": 1.0, "test/acc/y": 0.0, "test/n": 2.0,
                       "test/tokens/planned": 6.0, "test/tokens/actual": 6.0}
    assert "val/tokens/planned" not in accuracy_metrics("val", unique)  # validation logs tokens per step
    used = usage_summary(unique)
    assert used["tokens_per_frame"] == [4] and used["frames"] == 1.5 and used["samples"] == 2
    assert usage_summary([]) == {}
