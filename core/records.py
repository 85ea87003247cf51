"""Records passed between the data side and the model side.

The DataModule yields :class:`Batch` objects built from :class:`Sample` items; the model's
prompt builder turns a batch into token ids, labels and visual positions once the budget
policy has chosen tokens per frame. Multiple-choice evaluation files of every supported
shape are read into :class:`MCQuestion`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class Turn:
    """One conversation turn: ``role`` is ``"human"`` or ``"gpt"``; ``value`` its text.

    A human turn may hold one ``<video>`` or ``<image>`` placeholder.
    """

    role: str
    value: str


@dataclass
class VisualUsage:
    """What the walk spent on one sample's video: the plan's visual tokens, the visual positions its
    prompt really held (measured by ``VideoLLM.splice`` from the prompt's mask, 0 until a prompt of
    the sample is spliced) and the timestamps (s) of the frames it kept."""

    planned_tokens: int
    kept_times: list[float]
    actual_tokens: int = 0


def question_turns(conversation: list[Turn]) -> list[Turn]:
    """``conversation`` up to its last question: a trailing gpt turn (the answer the model would
    generate or is scored on) is dropped; a copy of the list either way."""
    conv = list(conversation)
    return conv[:-1] if conv and conv[-1].role == "gpt" else conv


@dataclass
class Sample:
    """One decoded training/eval item.

    Attributes:
        frames: uint8 ``[T, H, W, 3]`` (``T = 1`` for an image).
        timestamps: ``T`` increasing times in seconds of the decoded frames (``[0.0]`` for images).
        conversation: turns, alternating human/gpt; loss is taken on gpt turns.
        kind: ``"video"``, ``"image"`` or ``"images"`` (several images of one question, MuirBench: one
            frame each, timestamps their positions ``0, 1, ...``, one ``<image>`` per image in the
            first human turn; the budget keeps every one).
        id: a stable identifier (annotation line or question id).
        source: the media path it was decoded from.
        meta: free-form extras (task family, answer, options, duration, ...).
    """

    frames: Tensor
    timestamps: list[float]
    conversation: list[Turn]
    kind: str = "video"
    id: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Batch:
    """A collated list of samples (frames keep their own ``T``: no padding across videos)."""

    samples: list[Sample]

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class MCQuestion:
    """A multiple-choice question read from a VideoMME/MLVU/EgoSchema/PerceptionTest-shaped file.

    Attributes:
        id: question id.
        video: media path (absolute, or relative to the file's root).
        question: question text without the options.
        options: option texts without their letters, in order (A, B, C, ...).
        answer: index into ``options`` of the correct one (``None`` when the file has no key).
        category: task family / category for per-category accuracy.
        meta: other fields of the source record.
    """

    id: str
    video: str
    question: str
    options: list[str]
    answer: int | None
    category: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def answer_letter(self) -> str | None:
        return None if self.answer is None else chr(ord("A") + self.answer)
