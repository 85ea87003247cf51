"""Several images in one question (MuirBench): reading them, placing them in the prompt, budgeting them.

A multi-image sample has ``kind == "images"``: its frames are the images (one row each, resized
to the first image's size so they stack), its timestamps their positions ``0, 1, ...`` (never
written into the prompt), and its first human turn holds one ``<image>`` per image
(:func:`images_prompt`). The budget keeps every image (:func:`plan_images`): a question refers to
its images by position, so none may be dropped.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..budget import FramePlan, tokens_per_frame

IMAGE = "<image>"
KIND = "images"


def image_array(source: Any, root: Path | None = None) -> np.ndarray:
    """One image -> uint8 ``[H, W, 3]`` RGB.

    Args:
        source: a PIL image, raw bytes, ``{"bytes": ..., "path": ...}`` (a parquet image cell) or a
            path (relative to ``root``).
        root: folder relative paths are resolved against.

    Raises:
        dynvlm.video.VideoReadError: naming the file (or ``<embedded image>``) that cannot be decoded.
    """
    from PIL import Image

    from dynvlm.data.video import VideoReadError

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


def plan_images(budget: Any, count: int) -> FramePlan:
    """Every one of ``count`` images at the dynamic rule's tokens per image.

    ``M = achievable(clamp(N_max // T, m_min, N))`` (``budget.tokens_per_frame`` when fixed), then
    lowered while ``T * M > N_max`` (to 1 at least); no image is ever dropped.

    Args:
        budget: the model's :class:`dynvlm.budget.BudgetPolicy`.
        count: ``T``, the question's images.

    Raises:
        ValueError: ``T`` images do not fit ``N_max`` even at one token each, naming both.
    """
    cfg = budget.cfg
    if count > cfg.max_tokens:
        raise ValueError(f"{count} images need at least {count} visual tokens, more than budget.max_tokens="
                         f"{cfg.max_tokens}: raise budget.max_tokens")
    wanted = cfg.tokens_per_frame or tokens_per_frame(count, cfg.max_tokens, cfg.min_tokens_per_frame, budget.n)
    m = budget.achievable(min(wanted, cfg.max_tokens // count))
    while m > 1 and count * m > cfg.max_tokens:
        m = budget.achievable(m - 1)
    return FramePlan(tuple(range(count)), m)
