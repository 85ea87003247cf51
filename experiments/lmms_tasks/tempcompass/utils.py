"""TempCompass multi-choice (local files): upstream lmms-eval prompt and scoring; see dynvlm.lmms.tasks.

Upstream sends an answer its rules cannot match to a ChatGPT judge; without ``OPENAI_API_KEY``
that judge fails ten times (sleeping 1-2 s each) and scores 0. Without a key the judge is
replaced by that result directly: the same score, without the minutes of retries.
"""

import os

from lmms_eval.tasks.tempcompass import utils as upstream

from dynvlm.lmms.tasks import annotations_loader, unanswered_guard, video_finder

if not os.environ.get("OPENAI_API_KEY"):
    upstream.get_eval_result = lambda prompt, *args, **kwargs: (None, 0)

process_docs = annotations_loader("DYNVLM_TEMPCOMPASS_ANNOTATIONS")
doc_to_visual = video_finder("DYNVLM_TEMPCOMPASS_VIDEOS", "video_id")
doc_to_text = upstream.tempcompass_doc_to_text_multi_choice
doc_to_answer = upstream.tempcompass_doc_to_answer
aggregate_rating = upstream.tempcompass_aggregate_rating


def _unanswered(doc, result):
    for value in result.values():
        value.update({"video-llm-prediction": "", "rating": 0})
    return result


process_results = unanswered_guard(upstream.tempcompass_process_results_multi_choice, doc_to_visual, _unanswered)
