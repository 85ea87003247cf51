"""MuirBench (local files): upstream lmms-eval prompt, filter and scoring; see dynvlm.lmms.tasks.

``image_list`` may hold parquet image cells (``{"bytes", "path"}``, as the published parquet) or
paths relative to ``$DYNVLM_MUIRBENCH_IMAGES`` (default: the annotation file's folder). An image
that is missing is passed on as its path: the model names it and the question scores 0.
"""

import io
import os
from pathlib import Path

from lmms_eval.tasks.muirbench import utils as upstream
from PIL import Image

from dynvlm.lmms.tasks import annotations_loader, env_path

VARIABLE = "DYNVLM_MUIRBENCH_ANNOTATIONS"
process_docs = annotations_loader(VARIABLE)
doc_to_text = upstream.muir_doc_to_text
doc_to_target = upstream.muir_doc_to_target
process_results = upstream.muir_process_results
aggregation = upstream.muir_aggregation
MultiChoiceRegexFilter = upstream.MultiChoiceRegexFilter


def _root():
    root = os.environ.get("DYNVLM_MUIRBENCH_IMAGES")
    if root:
        return Path(root).expanduser()
    path = env_path(VARIABLE)
    return path if path.is_dir() else path.parent


def doc_to_visual(doc):
    images = []
    for cell in doc["image_list"]:
        if hasattr(cell, "convert"):
            images.append(cell.convert("RGB"))
        elif isinstance(cell, dict) and cell.get("bytes"):
            images.append(Image.open(io.BytesIO(cell["bytes"])).convert("RGB"))
        else:
            path = Path(str(cell["path"] if isinstance(cell, dict) else cell)).expanduser()
            path = path if path.is_absolute() else _root() / path
            images.append(Image.open(path).convert("RGB") if path.is_file() else str(path))
    return images
