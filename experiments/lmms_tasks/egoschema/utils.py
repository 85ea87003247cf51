"""EgoSchema subset (local files): upstream lmms-eval prompt and scoring; see dynvlm.lmms.tasks.

Upstream scoring picks a random option when it reads no letter; a question whose video is
missing is scored wrong before that can happen.
"""

from lmms_eval.tasks.egoschema import utils as upstream

from dynvlm.lmms.tasks import annotations_loader, unanswered_guard, video_finder

process_docs = annotations_loader("DYNVLM_EGOSCHEMA_ANNOTATIONS")
doc_to_visual = video_finder("DYNVLM_EGOSCHEMA_VIDEOS", "video_idx")
doc_to_text = upstream.egoschema_doc_to_text
doc_to_answer = upstream.egoschema_doc_to_answer
aggregate_score = upstream.egoschema_aggregate_score


def _unanswered(doc, result):
    result["submission"] = {doc["video_idx"]: -1}
    result["score"]["pred"] = -1
    return result


process_results = unanswered_guard(upstream.egoschema_process_results_generation, doc_to_visual, _unanswered)
