"""EgoSchema subset (local files): upstream lmms-eval prompt and scoring; see dynvlm.lmms.tasks.

Upstream scoring picks a random option when it reads no letter: the global RNG is seeded per
question first (:func:`dynvlm.data.benchmarks.egoschema.seed_of`), as ``dynvlm eval`` seeds its pick,
so both pick the same letter. A question whose video is missing is scored wrong before that can
happen.
"""

import random

from lmms_eval.tasks.egoschema import utils as upstream

from dynvlm.data.benchmarks.egoschema import seed_of
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


def _seeded(doc, results):
    random.seed(seed_of(doc))
    return upstream.egoschema_process_results_generation(doc, results)


process_results = unanswered_guard(_seeded, doc_to_visual, _unanswered)
