"""PerceptionTest val MC (local files): upstream lmms-eval prompt and scoring; see dynvlm.lmms.tasks."""

from lmms_eval.tasks.perceptiontest.val import utils as upstream

from dynvlm.lmms.tasks import annotations_loader, unanswered_guard, video_finder

process_docs = annotations_loader("DYNVLM_PERCEPTIONTEST_ANNOTATIONS")
doc_to_visual = video_finder("DYNVLM_PERCEPTIONTEST_VIDEOS", "video_name")
doc_to_text = upstream.perceptiontest_val_doc_to_text
doc_to_answer = upstream.perceptiontest_val_doc_to_answer
aggregate_accuracy = upstream.perceptiontest_val_aggregate_accuracy


def _unanswered(doc, result):
    result["accuracy"].update(pred_id=-1, correct=0)
    return result


process_results = unanswered_guard(upstream.perceptiontest_val_process_results_mc, doc_to_visual, _unanswered)
