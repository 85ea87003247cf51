"""``llava_ov``: LLaVA-OneVision's prompt, as its Hugging Face processor writes it.

``<|im_start|>user\n<video>\n{question}<|im_end|>\n<|im_start|>assistant\n``: ChatML turns rendered
here (not by the tokenizer's template, which may add a system turn of its own), no system turn
unless one is given, and a video's kept frames contiguous with no timestamps, so the ``<video>``
placeholder becomes one ``<image>`` per frame (then ``M`` visual positions each, plus the model's
separator after the last one when ``model.projector.separator`` is on: LLaVA-OV's ``image_newline``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dynvlm import PromptFormat, hookimpl
from dynvlm.interfaces import IMAGE, VIDEO

IM_START, IM_END = "<|im_start|>", "<|im_end|>"


class LlavaOneVisionFormat(PromptFormat):
    """LLaVA-OneVision's ChatML prompt with contiguous frames.

    Args:
        system_prompt: a system turn's text; ``None`` (default) writes none, as the Hugging Face
            processor's chat template does (the original LLaVA-NeXT code used
            ``"You are a helpful assistant."``).
    """

    def __init__(self, system_prompt: str | None = None) -> None:
        self.system_prompt = system_prompt or None

    def system(self, default: str | None) -> str | None:
        return self.system_prompt  # the model's own format: the LLM plugin's default is not LLaVA-OV's

    def expand(self, text: str, kind: str, timestamps: Sequence[float]) -> str:
        if not timestamps:
            raise ValueError("prompt 'llava_ov': a sample needs at least one kept frame")
        if VIDEO in text:
            return text.replace(VIDEO, IMAGE * len(timestamps))
        if len(timestamps) != 1:
            raise ValueError(f"prompt 'llava_ov': an {IMAGE} placeholder stands for one frame, but "
                             f"{len(timestamps)} frames were kept (kind {kind!r}); use {VIDEO} for videos")
        return text

    def render(self, messages: Sequence[Mapping[str, str]], tokenizer: Any, generation_prompt: bool) -> str:
        text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
        return text + (f"{IM_START}assistant\n" if generation_prompt else "")


@hookimpl
def register_prompt_formats(register):
    register("llava_ov", LlavaOneVisionFormat)
