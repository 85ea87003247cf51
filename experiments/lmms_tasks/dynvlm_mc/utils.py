"""dynvlm's own multiple-choice files (any shape ``dynvlm eval --data`` reads) through lmms-eval.

The prompt is the one ``dynvlm eval`` builds (:func:`dynvlm.data.annotations.format_mc`), the
answer is read with :func:`dynvlm.scoring.answers.extract_choice` (generation) or picked by the highest
log-likelihood of the option letters (``dynvlm_mc_ppl``, ``--force_simple``), so the accuracy
equals ``dynvlm eval`` on the same file and checkpoint. ``lmms_eval_accuracy`` also reports the
letters lmms-eval's own extraction (``extract_mcq_answer``, used by VideoMME/MLVU) reads.

Environment: ``DYNVLM_MC_ANNOTATIONS`` (the file), ``DYNVLM_MC_VIDEOS`` (video root; default:
the file's folder, like ``data.root``), ``DYNVLM_MC_INSTRUCTION`` (the line after the options;
default: dynvlm's).
"""

import os
from pathlib import Path

from dynvlm.data.annotations import MC_INSTRUCTION, format_mc, mc_question
from dynvlm.lmms.tasks import annotations_loader, env_path, video_missing
from dynvlm.scoring.answers import extract_choice, letters

VARIABLE = "DYNVLM_MC_ANNOTATIONS"
process_docs = annotations_loader(VARIABLE)


def _question(doc):
    return mc_question({k: v for k, v in doc.items() if v is not None}, f"question {doc.get('question_id', '?')}")


def doc_to_visual(doc):
    video = Path(_question(doc).video).expanduser()
    if video.is_absolute():
        return [str(video)]
    root = os.environ.get("DYNVLM_MC_VIDEOS")
    if not root:
        path = env_path(VARIABLE)
        root = path if path.is_dir() else path.parent
    return [str(Path(root).expanduser() / video)]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    q = _question(doc)
    return format_mc(q.question, q.options, os.environ.get("DYNVLM_MC_INSTRUCTION", MC_INSTRUCTION))


def doc_to_target(doc):
    return _question(doc).answer


def doc_to_choice(doc):
    return list(letters(len(_question(doc).options)))


def _row(doc, pred, lmms_pred):
    q = _question(doc)
    return {"accuracy": {"question_id": q.id, "category": q.category, "pred": pred, "answer": q.answer},
            "lmms_eval_accuracy": {"question_id": q.id, "pred": lmms_pred, "answer": q.answer}}


def process_results(doc, results):
    """Generation: the option ``dynvlm.scoring.answers.extract_choice`` reads (-1: none, or the video is missing)."""
    from lmms_eval.tasks._task_utils.mcq_extract import extract_mcq_answer

    q = _question(doc)
    if video_missing(doc_to_visual, doc):
        return _row(doc, -1, -1)
    text = results[0]
    pred = extract_choice(text, len(q.options), q.options)
    valid = letters(len(q.options))
    lmms = extract_mcq_answer(text, choices=list(valid))
    return _row(doc, -1 if pred is None else pred, valid.index(lmms) if lmms else -1)


def process_results_ppl(doc, results):
    """Log-likelihood: the option letter with the highest log-likelihood (-1 when the video is missing)."""
    if video_missing(doc_to_visual, doc):
        return _row(doc, -1, -1)
    scores = [_loglik(r) for r in results]
    pred = max(range(len(scores)), key=scores.__getitem__)
    return _row(doc, pred, pred)


def _loglik(result):
    """The log-likelihood of one ``(ll, is_greedy)`` result. lmms-eval 0.7.3 hands multiple-choice
    results to ``process_results`` as ``str((ll, is_greedy))`` (``unwrap_generation_output``)."""
    if isinstance(result, str):
        return float(result.strip().strip("()").split(",")[0])
    return float(result[0])


def accuracy(items):
    """Share of questions whose prediction is the answer (unanswered ones count as wrong)."""
    return sum(r["pred"] == r["answer"] for r in items) / len(items) if items else 0.0
