"""Several images in one question (MuirBench): reading them and placing them in the prompt.

A multi-image sample has ``kind == "images"`` (:data:`IMAGES_KIND`): its frames are the images (one
row each, resized to the first image's size so they stack), its timestamps their positions
``0, 1, ...`` (never written into the prompt), and its first human turn holds one ``<image>`` per
image (:func:`images_prompt`). The budget keeps every image
(:meth:`dynvlm.budget.BudgetPolicy.plan_images`): a question refers to its images by position, so
none may be dropped. ``dynvlm eval`` (:class:`dynvlm.data.dataset.VideoQADataset`) and the lmms-eval
bridge both build such samples with these functions, so they feed the same pixels and prompt.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynvlm.data.video import VideoReadError

IMAGE = "<image>"
IMAGES_KIND = "images"


def image_array(source: Any, root: Path | None = None) -> np.ndarray:
    """One image -> uint8 ``[H, W, 3]`` RGB.

    Args:
        source: a PIL image, raw bytes, ``{"bytes": ..., "path": ...}`` (a parquet image cell) or a
            path (relative to ``root``).
        root: folder relative paths are resolved against.

    Raises:
        dynvlm.data.video.VideoReadError: naming the file (or ``<embedded image>``) that cannot be decoded.
    """
    from PIL import Image

    if hasattr(source, "convert"):
        return np.asarray(source.convert("RGB")).copy()
    if isinstance(source, dict):
        source = source.get("bytes") or source.get("path")
    name = "<embedded image>" if isinstance(source, bytes | bytearray) else str(source)
    try:
        if isinstance(source, bytes | bytearray):
            img = Image.open(io.BytesIO(source))
        else:
            path = Path(str(source)).expanduser()
            if root is not None and not path.is_absolute():
                path = root / path
            name = str(path)
            img = Image.open(path)
        return np.asarray(img.convert("RGB")).copy()
    except (OSError, ValueError) as exc:
        raise VideoReadError(name, f"cannot read image ({exc})") from None


def stack_images(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """Images ``[H_i, W_i, 3]`` -> uint8 ``[T, H, W, 3]``, each resized (bilinear) to the first one's size.

    The encoder resizes every frame to its own input size anyway; one common size lets the images
    travel as one tensor, and both ``dynvlm eval`` and the lmms-eval bridge call this, so they feed
    the same pixels.
    """
    from PIL import Image

    if not arrays:
        raise ValueError("a multi-image question needs at least one image")
    h, w = arrays[0].shape[:2]
    out = [a if a.shape[:2] == (h, w) else np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR))
           for a in arrays]
    return torch.from_numpy(np.stack(out))


def images_prompt(text: str, count: int) -> str:
    """The human turn of a question about ``count`` images: the text's own ``<image>`` markers when
    it holds exactly ``count`` of them (interleaved images stay where the question puts them), else
    ``count`` markers on lines of their own before the text (lmms-eval's order: images, then text),
    the text's stray markers written as ``[image]``."""
    if text.count(IMAGE) == count:
        return text
    return "\n".join([IMAGE] * count + [text.replace(IMAGE, "[image]")])
