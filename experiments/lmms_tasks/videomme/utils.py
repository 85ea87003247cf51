"""VideoMME (local files): upstream lmms-eval prompt and scoring; see dynvlm.lmms.tasks."""

from lmms_eval.tasks.videomme import utils as upstream

from dynvlm.lmms.tasks import annotations_loader, unanswered_guard, video_finder

process_docs = annotations_loader("DYNVLM_VIDEOMME_ANNOTATIONS")
doc_to_visual = video_finder("DYNVLM_VIDEOMME_VIDEOS", "videoID")
doc_to_text = upstream.videomme_doc_to_text
aggregate_results = upstream.videomme_aggregate_results


def _unanswered(doc, result):
    result["videomme_perception_score"].update(pred_answer="", score=0.0)
    return result


process_results = unanswered_guard(upstream.videomme_process_results, doc_to_visual, _unanswered)
