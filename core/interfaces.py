"""The three component interfaces every plugin implements.

Shapes used throughout:

- ``F``: frames in the batch (all videos flattened together)
- ``N``: tokens per frame produced by the encoder, on an ``h x w`` grid (``N = h * w``)
- ``C``: encoder width; ``D``: language-model width
- ``M``: tokens per frame kept by a compressor (``M <= tokens``)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

__all__ = ["Compressed", "Compressor", "VisionEncoder", "LanguageModel", "PromptFormat", "check_compressor_call",
           "IMAGE", "VIDEO", "format_seconds", "video_text"]

#: one frame's place in a prompt (expanded to the frame's ``M`` visual positions); a sample's visual placeholder
IMAGE, VIDEO = "<image>", "<video>"


@dataclass
class Compressed:
    """What a compressor returns.

    Attributes:
        x: ``[F, M, C]`` kept (or merged) tokens, in the source spatial order.
        positions: ``[F, M]`` source index (or size-weighted centroid index) of each output
            token on the flattened ``h*w`` grid, increasing along ``M``; ``None`` when the
            compressor has no meaningful per-token source.
        aux_loss: scalar auxiliary loss (e.g. a keep-ratio regulariser), or ``None``.
    """

    x: Tensor
    positions: Tensor | None = None
    aux_loss: Tensor | None = None


def check_compressor_call(x: Tensor, grid: tuple[int, int], tokens: int, name: str = "compressor") -> None:
    """Validate the arguments of :meth:`Compressor.forward`; raise ``ValueError`` naming the problem.

    Args:
        x: ``[F, N, C]`` tokens.
        grid: ``(h, w)`` with ``h * w == N``.
        tokens: requested tokens per frame, in ``[1, N]``.
    """
    if x.dim() != 3:
        raise ValueError(f"{name}: expected tokens of shape [F, N, C], got shape {tuple(x.shape)}")
    if len(grid) != 2 or any(int(g) < 1 for g in grid):
        raise ValueError(f"{name}: grid must be (h, w) with positive sides, got {grid!r}")
    h, w = int(grid[0]), int(grid[1])
    n = x.shape[1]
    if h * w != n:
        raise ValueError(f"{name}: grid {h}x{w} holds {h * w} tokens but x has N={n} tokens per frame")
    if isinstance(tokens, bool) or not isinstance(tokens, int):
        raise ValueError(f"{name}: tokens must be an int, got {type(tokens).__name__} {tokens!r}")
    if not 1 <= tokens <= n:
        raise ValueError(f"{name}: tokens={tokens} is outside [1, N={n}] for grid {h}x{w}")


class Compressor(nn.Module):
    """Base class of per-frame visual-token compressors.

    ``[F, N, C]`` tokens on an ``h x w`` grid -> at most ``tokens`` tokens per frame.

    Subclasses take the encoder width as ``dim`` (passed by the core, never from YAML) plus
    their own keyword arguments from the YAML spec, and must accept any ``tokens`` in
    ``[1, N]`` at call time: the budget policy decides it per batch.
    """

    #: ``True`` for a compressor that always serves all ``N`` tokens whatever is asked (``identity``):
    #: the budget then pays for ``N`` per frame, and the encoder's ``downsample`` option needs one.
    keeps_all: bool = False

    #: ``True`` for a compressor that only works on the encoder's tokens (width ``C``): it is then
    #: refused after the projector (``model.compressor_at: after_projector``), where it would get
    #: ``dim = D``, the language model's width. Width-agnostic compressors leave it ``False``.
    needs_encoder_width: bool = False

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = int(dim)

    def achievable(self, tokens: int, grid: tuple[int, int]) -> int:
        """The largest token count ``<= tokens`` this compressor produces exactly on ``grid``.

        The default serves every count; grid-shaped compressors override it.
        """
        return max(1, min(int(tokens), int(grid[0]) * int(grid[1])))

    def forward(self, x: Tensor, grid: tuple[int, int], tokens: int) -> Compressed:  # pragma: no cover
        """Compress ``x`` ``[F, N, C]`` on ``grid`` ``(h, w)`` to at most ``tokens`` per frame."""
        raise NotImplementedError


class VisionEncoder(nn.Module):
    """Base class of vision towers.

    Attributes:
        grid: ``(h, w)`` patch grid of one frame, ``N = h * w``.
        width: ``C``, the channel width of the output tokens.
        image_size: side in pixels of the square input the tower expects.
    """

    grid: tuple[int, int]
    width: int
    image_size: int

    def preprocess(self, frames: Tensor) -> Tensor:  # pragma: no cover
        """uint8 ``[F, H, W, 3]`` frames -> normalised float ``[F, 3, image_size, image_size]``."""
        raise NotImplementedError

    def forward(self, frames: Tensor) -> Tensor:  # pragma: no cover
        """Preprocessed float ``[F, 3, H, W]`` frames -> patch tokens ``[F, N, C]`` (no CLS)."""
        raise NotImplementedError


class LanguageModel(nn.Module):
    """Base class of causal language models the visual tokens are spliced into.

    Attributes:
        width: ``D``, the embedding width.
        tokenizer: a ``transformers.PreTrainedTokenizerBase``.
    """

    width: int
    tokenizer: Any

    def embed(self, ids: Tensor) -> Tensor:  # pragma: no cover
        """Token ids ``[B, L]`` -> input embeddings ``[B, L, D]``."""
        raise NotImplementedError

    def forward(self, embeds: Tensor, attention_mask: Tensor, labels: Tensor | None = None) -> Any:  # pragma: no cover
        """Embeddings ``[B, L, D]``, mask ``[B, L]``, labels ``[B, L]`` (-100 = ignored) -> a
        ``transformers`` ``CausalLMOutput`` with ``loss`` (when labels are given) and ``logits``."""
        raise NotImplementedError

    def generate(self, embeds: Tensor, attention_mask: Tensor, **kw: Any) -> Tensor:  # pragma: no cover
        """Greedy/sampled generation from embeddings -> new token ids ``[B, L_new]``."""
        raise NotImplementedError



def format_seconds(t: float) -> str:
    """A timestamp as dynvlm's prompt writes it: ``1.0 -> "1s"``, ``0.5 -> "0.5s"`` (one decimal)."""
    r = round(float(t), 1)
    return f"{int(r)}s" if r == int(r) else f"{r}s"


def video_text(timestamps: Sequence[float]) -> str:
    """``"1s: <image>; 2s: <image>"`` for the kept frames' timestamps (dynvlm's video text)."""
    return "; ".join(f"{format_seconds(t)}: {IMAGE}" for t in timestamps)


class PromptFormat:
    """Base class of prompt formats (``model.prompt``): how a conversation with visual content is written.

    A format decides three things; this base class implements dynvlm's own format (``dynvlm``):

    - :meth:`system`: the system turn (dynvlm: the language model's ``system_prompt``);
    - :meth:`expand`: the first human turn's text with its placeholder (``<video>`` or ``<image>``)
      replaced by one :data:`IMAGE` per kept frame, where the frames go in the text (dynvlm:
      ``"1s: <image>; 2s: <image>"`` from the kept frames' timestamps);
    - :meth:`render`: chat messages -> the text that is tokenised (dynvlm: the tokenizer's chat template).

    The prompt builder then turns each :data:`IMAGE` into the frame's ``M`` visual positions.
    :meth:`render` must render a conversation as a growing prefix (the text up to an assistant
    header is a prefix of the text with that answer), so answers can be located. Formats are
    built from ``model.prompt`` (``{name: <registered>, **kwargs}``); the core supplies nothing.
    """

    def system(self, default: str | None) -> str | None:
        """The system turn's text, or ``None`` for none; ``default`` is the language model's ``system_prompt``."""
        return default

    def expand(self, text: str, kind: str, timestamps: Sequence[float]) -> str:
        """``text`` (the first human turn) with its visual placeholder replaced by one :data:`IMAGE` per kept frame.

        Args:
            text: the turn, holding exactly one ``<video>`` or ``<image>``.
            kind: the sample's kind (``video``, ``image``, ...).
            timestamps: the kept frames' times in seconds, in order (at least one).
        """
        if not timestamps:
            raise ValueError("prompt: a sample needs at least one kept frame")
        if VIDEO in text:
            return text.replace(VIDEO, video_text(timestamps))
        if len(timestamps) != 1:
            raise ValueError(f"prompt: an {IMAGE} placeholder stands for one frame, but {len(timestamps)} frames "
                             f"were kept (kind {kind!r}); use {VIDEO} for videos")
        return text

    def render(self, messages: Sequence[Mapping[str, str]], tokenizer: Any, generation_prompt: bool) -> str:
        """Chat ``messages`` (``role``: ``system``/``user``/``assistant``, ``content``) -> the text to tokenise;
        ``generation_prompt`` appends the assistant header."""
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)
