"""``dynvlm``: dynvlm's own prompt format (the default of ``model.prompt``).

A video's kept frames are written with their timestamps, ``"0.5s: <image>; 1.5s: <image>"``, the
system turn is the language model's ``system_prompt`` and the tokenizer's chat template renders
the conversation: what :class:`dynvlm.PromptFormat` does.
"""

from __future__ import annotations

from dynvlm import PromptFormat, hookimpl


class TimestampFormat(PromptFormat):
    """Frames with their timestamps (``"1s: <image>; 2s: <image>"``), the LLM's system prompt and chat template."""


@hookimpl
def register_prompt_formats(register):
    register("dynvlm", TimestampFormat)
