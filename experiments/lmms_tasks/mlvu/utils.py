"""MLVU dev (local files): upstream lmms-eval prompt and scoring; see dynvlm.lmms.tasks."""

from lmms_eval.tasks.mlvu import utils as upstream

from dynvlm.lmms.tasks import annotations_loader, unanswered_guard, video_finder

process_docs = annotations_loader("DYNVLM_MLVU_ANNOTATIONS")
doc_to_visual = video_finder("DYNVLM_MLVU_VIDEOS", "video_name")
doc_to_text = upstream.mlvu_doc_to_text
aggregate_results = upstream.mlvu_aggregate_results_dev


def _unanswered(doc, result):
    result["mlvu_percetion_score"]["pred_answer"] = ""
    return result


process_results = unanswered_guard(upstream.mlvu_process_results, doc_to_visual, _unanswered)
