"""pluggy hook specifications of dynvlm.

A plugin is a module named by an entry point in the ``dynvlm`` group; it holds functions
decorated with :data:`dynvlm.hookimpl` whose names match the specs below. Each spec is a
verb that receives a ``register(name, cls)`` callback.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "dynvlm"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[str, type], None]


@hookspec
def register_compressors(register: Register) -> None:
    """Register compressor classes (subclasses of :class:`dynvlm.Compressor`): ``register(name, cls)``."""


@hookspec
def register_encoders(register: Register) -> None:
    """Register vision encoder classes (subclasses of :class:`dynvlm.VisionEncoder`)."""


@hookspec
def register_llms(register: Register) -> None:
    """Register language-model classes (subclasses of :class:`dynvlm.LanguageModel`)."""


@hookspec
def register_budgets(register: Register) -> None:
    """Register budget policy classes (subclasses of :class:`dynvlm.budget.Policy`): ``register(name, cls)``.

    A policy turns a sample's available frames (timestamps, duration, optionally the decoded
    pixels) and the run's budget (``N_max``, the encoder grid, the compressor's exact counts)
    into a plan: which frames to keep and the tokens per frame. ``budget.policy`` names it.
    """


@hookspec
def register_prompt_formats(register: Register) -> None:
    """Register prompt formats (subclasses of :class:`dynvlm.PromptFormat`): ``register(name, cls)``.

    A format writes a conversation with visual content as text: the system turn, where the kept
    frames go (timestamps, contiguous frames, several images) and the chat rendering.
    ``model.prompt`` names it (default ``dynvlm``).
    """


#: hook name -> component kind it registers
HOOK_KINDS: dict[str, str] = {
    "register_compressors": "compressor",
    "register_encoders": "encoder",
    "register_llms": "llm",
    "register_budgets": "budget",
    "register_prompt_formats": "prompt",
}
