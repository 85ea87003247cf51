"""The prompt builder: a conversation + planned visual tokens -> token ids, labels and visual positions.

A prompt format (:class:`dynvlm.PromptFormat`, ``model.prompt``) writes the conversation: by default
(``dynvlm``) a video's placeholder becomes ``"0.5s: <image>; 1.5s: <image>; ..."`` from the real
timestamps of the kept frames, an image's stays a single ``<image>``, and the language model's own
chat template renders it. Then each ``<image>`` is expanded to the frame's ``M`` visual positions,
marked with :data:`IMAGE_TOKEN_ID` (a sentinel the model replaces with projected visual embeddings);
with a separator (``model.projector.separator``) a video's last frame is followed by one more
visual position. Labels are :data:`IGNORE_INDEX` everywhere except the assistant answers (their
text and end-of-turn token). Batches pad to the longest sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dynvlm.interfaces import IMAGE, VIDEO, PromptFormat, format_seconds, video_text
from dynvlm.records import Turn

__all__ = ["IMAGE", "VIDEO", "IMAGE_TOKEN_ID", "IGNORE_INDEX", "Encoded", "PromptBatch", "PromptBuilder",
           "format_seconds", "video_text"]

IMAGE_TOKEN_ID = -200  # never a real token id: marks one visual position
IGNORE_INDEX = -100  # label value the loss skips
ROLES = {"human": "user", "gpt": "assistant"}


@dataclass
class Encoded:
    """One tokenised sample.

    Attributes:
        ids: token ids with :data:`IMAGE_TOKEN_ID` at each visual position, length ``L``.
        labels: ``L`` targets, :data:`IGNORE_INDEX` except assistant answers.
        answer_spans: ``(start, end)`` of each assistant answer's labelled tokens, in order.
        visual_tokens: number of visual positions (``frames * M``).
    """

    ids: list[int]
    labels: list[int]
    answer_spans: list[tuple[int, int]] = field(default_factory=list)
    visual_tokens: int = 0


@dataclass
class PromptBatch:
    """Padded batch: ``input_ids`` ``[B, L]`` (visual positions hold the pad id), ``labels`` ``[B, L]``,
    ``attention_mask`` ``[B, L]`` (1 = real), ``visual_mask`` ``[B, L]`` bool (True = visual position)."""

    input_ids: Tensor
    labels: Tensor
    attention_mask: Tensor
    visual_mask: Tensor
    answer_spans: list[list[tuple[int, int]]]


class PromptBuilder:
    """Turns conversations into :class:`Encoded` sequences with a tokenizer's chat template.

    Args:
        tokenizer: a ``transformers`` tokenizer with a chat template and a pad token.
        system_prompt: system turn text, or ``None`` to leave it out.
        max_length: raise when a sequence is longer (``None`` = no limit).
        cache_size: tokenised conversations kept (keyed by text and timestamps; M is applied after).
        format: the prompt format (default: dynvlm's, :class:`dynvlm.PromptFormat`).
        separator: one more visual position after a video's last frame (the model's learned separator).
    """

    def __init__(self, tokenizer: Any, system_prompt: str | None = None, max_length: int | None = None,
                 cache_size: int = 16384, format: PromptFormat | None = None, separator: bool = False) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("prompt: the tokenizer has no chat template")
        self.tokenizer = tokenizer
        self.format = format if format is not None else PromptFormat()
        self.system_prompt = self.format.system(system_prompt)
        self.separator = bool(separator)
        self.max_length = max_length
        # rendering and tokenising do not depend on M, and an epoch sees the same samples again
        self.cache_size = cache_size
        self._cache: dict[tuple, list[tuple[str, list[int]]]] = {}

    # -- text ------------------------------------------------------------------------------
    def messages(self, conversation: Sequence[Turn], kind: str, timestamps: Sequence[float]) -> list[dict[str, str]]:
        """Chat messages with the placeholder replaced by the visual text (``<image>`` per frame)."""
        if not conversation or conversation[0].role != "human":
            raise ValueError("prompt: a conversation must start with a human turn")
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for i, turn in enumerate(conversation):
            if turn.role not in ROLES:
                raise ValueError(f"prompt: turn {i} has role {turn.role!r}; roles are 'human' and 'gpt'")
            if i and turn.role == conversation[i - 1].role:
                raise ValueError(f"prompt: turns {i - 1} and {i} are both {turn.role!r}; roles must alternate")
            text = turn.value
            n_ph = text.count(VIDEO) + text.count(IMAGE)
            if i == 0 and kind == "images":  # several images: one <image> per kept image, no timestamps
                if n_ph != len(timestamps) or VIDEO in text:
                    raise ValueError(f"prompt: a question about {len(timestamps)} images needs {len(timestamps)} "
                                     f"{IMAGE} placeholders (and no {VIDEO}) in its first human turn, found {n_ph}")
            elif i == 0:
                if n_ph != 1:
                    raise ValueError(f"prompt: the first human turn must hold exactly one {VIDEO} or {IMAGE} "
                                     f"placeholder, found {n_ph} in {text!r}")
                text = self.format.expand(text, kind, timestamps)
            elif n_ph:
                raise ValueError(f"prompt: turn {i} holds a {VIDEO}/{IMAGE} placeholder; only the first human turn may")
            msgs.append({"role": ROLES[turn.role], "content": text})
        return msgs

    def _render(self, msgs: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.format.render(msgs, self.tokenizer, generation_prompt)

    # -- tokens ----------------------------------------------------------------------------
    def encode(
        self,
        conversation: Sequence[Turn],
        timestamps: Sequence[float],
        tokens_per_frame: int,
        kind: str = "video",
        generation_prompt: bool = False,
    ) -> Encoded:
        """Tokenise a conversation whose kept frames have ``timestamps`` and ``tokens_per_frame`` each.

        With ``generation_prompt`` the conversation must end with a human turn; the result is the
        prompt up to the assistant header (for ``generate``), with every label ignored.
        """
        if tokens_per_frame < 1:
            raise ValueError(f"prompt: tokens_per_frame must be >= 1, got {tokens_per_frame}")
        key = (tuple((t.role, t.value) for t in conversation), tuple(timestamps), kind, generation_prompt)
        segments = self._cache.get(key)
        if segments is None:
            segments = self._segments(self._pieces(conversation, timestamps, kind, generation_prompt), len(timestamps),
                                      self.separator and kind == "video")
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[key] = segments
        return self._expand_images(segments, tokens_per_frame)

    def _pieces(self, conversation: Sequence[Turn], timestamps: Sequence[float], kind: str,
                generation_prompt: bool) -> list[tuple[str, bool]]:
        """The rendered conversation cut into ``(text, is_answer)`` pieces."""
        msgs = self.messages(conversation, kind, timestamps)
        pieces: list[tuple[str, bool]] = []
        if generation_prompt:
            if msgs[-1]["role"] != "user":
                raise ValueError("prompt: a generation prompt needs a conversation ending with a human turn")
            return [(self._render(msgs, True), False)]
        if msgs[-1]["role"] != "assistant":
            raise ValueError("prompt: a training conversation must end with a gpt turn (the answer)")
        # Answers are found by rendering growing prefixes: what the template adds between "up to
        # the assistant header" and "with this answer" is the answer plus its end-of-turn token.
        done = 0
        for j, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            prefix = self._render(msgs[:j], True)
            full = self._render(msgs[: j + 1], False)
            if not full.startswith(prefix) or not prefix.startswith(_rendered_prefix(pieces)):
                raise ValueError("prompt: the chat template does not render turns as a growing prefix; "
                                 "cannot locate the assistant answers")
            pieces.append((prefix[done:], False))
            answer = full[len(prefix):]
            kept = answer.rstrip()  # the newline after the end-of-turn token is not a target
            pieces.append((kept, True))
            pieces.append((answer[len(kept):], False))
            done = len(full)
        return pieces

    def _segments(self, pieces: list[tuple[str, bool]], frames: int, separator: bool = False) -> list[tuple[str, list[int]]]:
        """Pieces -> ``(kind, token ids)`` segments, kind ``text``, ``answer``, ``image`` (one ``<image>``),
        ``separator`` (one position after the last ``<image>``, with ``separator``) or ``end`` (closes an
        answer span). All text chunks go through the tokenizer in one batched call."""
        layout: list[tuple[str, int]] = []  # (kind, chunk index)
        chunks: list[str] = []
        for text, is_answer in pieces:
            for k, chunk in enumerate(text.split(IMAGE)):
                if k:
                    if is_answer:
                        raise ValueError(f"prompt: an answer holds {IMAGE}")
                    layout.append(("image", -1))
                if chunk:
                    layout.append(("answer" if is_answer else "text", len(chunks)))
                    chunks.append(chunk)
            if is_answer:
                layout.append(("end", -1))
        n_images = sum(kind == "image" for kind, _ in layout)
        if n_images != frames:
            raise ValueError(f"prompt: {n_images} {IMAGE} positions in the rendered text but {frames} frames; "
                             f"text must not contain a literal {IMAGE}")
        if separator:
            last = max(i for i, (kind, _) in enumerate(layout) if kind == "image")
            layout.insert(last + 1, ("separator", -1))
        ids = self.tokenizer(chunks, add_special_tokens=False)["input_ids"] if chunks else []
        return [(kind, list(ids[i]) if i >= 0 else []) for kind, i in layout]

    def _expand_images(self, segments: list[tuple[str, list[int]]], m: int) -> Encoded:
        ids: list[int] = []
        labels: list[int] = []
        spans: list[tuple[int, int]] = []
        start: int | None = None
        n_images = extra = 0
        for kind, tok in segments:
            if kind == "image":
                ids.extend([IMAGE_TOKEN_ID] * m)
                labels.extend([IGNORE_INDEX] * m)
                n_images += 1
            elif kind == "separator":
                ids.append(IMAGE_TOKEN_ID)
                labels.append(IGNORE_INDEX)
                extra += 1
            elif kind == "end":
                spans.append((len(ids) if start is None else start, len(ids)))
                start = None
            else:
                if kind == "answer" and start is None:
                    start = len(ids)
                ids.extend(tok)
                labels.extend(tok if kind == "answer" else [IGNORE_INDEX] * len(tok))
        if self.max_length is not None and len(ids) > self.max_length:
            raise ValueError(f"prompt: sequence of {len(ids)} tokens exceeds max_length={self.max_length}")
        return Encoded(ids, labels, spans, n_images * m + extra)

    # -- batching --------------------------------------------------------------------------
    def collate(self, items: Sequence[Encoded], padding_side: str = "right") -> PromptBatch:
        """Pad to the longest item. ``right`` for training/scoring, ``left`` for batched generation."""
        if padding_side not in ("right", "left"):
            raise ValueError(f"prompt: padding_side must be 'right' or 'left', got {padding_side!r}")
        if not items:
            raise ValueError("prompt: cannot collate an empty batch")
        pad = self.tokenizer.pad_token_id
        if pad is None:
            raise ValueError("prompt: the tokenizer has no pad token")
        length = max(len(e.ids) for e in items)
        b = len(items)
        ids = torch.full((b, length), pad, dtype=torch.long)
        labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((b, length), dtype=torch.long)
        spans = []
        for i, e in enumerate(items):
            n = len(e.ids)
            off = 0 if padding_side == "right" else length - n
            ids[i, off : off + n] = torch.tensor(e.ids, dtype=torch.long)
            labels[i, off : off + n] = torch.tensor(e.labels, dtype=torch.long)
            mask[i, off : off + n] = 1
            spans.append([(s + off, t + off) for s, t in e.answer_spans])
        visual = ids == IMAGE_TOKEN_ID
        ids[visual] = pad
        return PromptBatch(ids, labels, mask, visual, spans)


def _rendered_prefix(pieces: list[tuple[str, bool]]) -> str:
    return "".join(t for t, _ in pieces)
