"""lmms-eval bridge: ``lmms-eval --model dynvlm --model_args checkpoint=RUN.ckpt,...``.

lmms-eval finds external models through the entry-point group ``lmms_eval.models``
(``pyproject.toml``: ``dynvlm = "dynvlm.lmms:MANIFEST"``). It loads every entry point of that
group at start-up and one that fails stops the others, so this module imports nothing heavy:
:data:`MANIFEST` is a callable that builds the ``ModelManifest`` only when lmms-eval asks, and
the model class (:class:`dynvlm.lmms.model.DynVLM`) is imported by its dotted path on use.

Install lmms-eval into its own environment with ``bash scripts/setup_lmms.sh`` (keeps your
torch); see docs/evaluation.md.
"""

from __future__ import annotations

from typing import Any

MODEL_ID = "dynvlm"
CHAT_CLASS_PATH = "dynvlm.lmms.model.DynVLM"
SIMPLE_CLASS_PATH = "dynvlm.lmms.model.DynVLMSimple"  # --force_simple: log-likelihood tasks


def manifests() -> list[Any]:
    """lmms-eval's ``ModelManifest`` for ``dynvlm`` (chat model; simple model with ``--force_simple``), built on demand."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, chat_class_path=CHAT_CLASS_PATH, simple_class_path=SIMPLE_CLASS_PATH)]


MANIFEST = manifests
