"""Shared code of the Hugging Face vision-tower plugins (``clip``, ``siglip``).

A tower is loaded from a local checkpoint folder (``path:``, ``local_files_only=True``) or
built with random weights from an inline ``config:`` mapping. Layers after ``select_layer``
and the pooling heads are removed after loading: they never influence the output, and
leaving trainable parameters unused would break DDP's gradient reduction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynvlm.interfaces import VisionEncoder

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


class HFVisionEncoder(VisionEncoder):
    """A ``transformers`` vision tower: uint8 frames -> ``[F, N, C]`` patch tokens of one hidden layer.

    Subclasses set ``model_class``/``config_class`` (e.g. ``"CLIPVisionModel"``/``"CLIPVisionConfig"``),
    ``has_cls`` (whether token 0 is a class token to drop) and the preprocessing defaults.

    Args:
        path: local folder holding a checkpoint saved with ``save_pretrained`` (and optionally a
            ``preprocessor_config.json`` with ``image_mean``/``image_std``/``do_center_crop``).
        config: inline config keyword arguments for a randomly initialised tower (exclusive with ``path``).
        select_layer: index into the tower's hidden states (``0`` = embeddings, ``-1`` = last layer);
            ``-2`` (LLaVA's choice) takes the penultimate layer. LLaVA-OneVision checkpoints need ``-1``: their
            towers were saved without the last layer, so their last is the one they use.
        dtype: parameter dtype name (``float32``, ``bfloat16``, ``float16``).
        attn_implementation: passed to ``transformers`` (``eager``, ``sdpa``, ...); ``None`` = its default.
        gradient_checkpointing: recompute layer activations in backward (memory grows with frames).
        downsample: serve the budget with the tower itself: frames are resized so that its patch
            grid is the ``a x b`` grid :meth:`downsample_grid` gives for ``M`` (position embeddings
            interpolated), instead of encoding the full grid and compressing. The model then plans
            ``M`` by :meth:`downsample_tokens` and needs the ``identity`` compressor.
    """

    model_class: str = ""  # names in `transformers`, imported on construction so that listing
    config_class: str = ""  # plugins (`dynvlm plugins`, config validation) does not import transformers
    has_cls: bool = False
    default_mean: tuple[float, float, float] = CLIP_MEAN
    default_std: tuple[float, float, float] = CLIP_STD
    default_center_crop: bool = True
    kind_name: str = "vision encoder"

    def __init__(
        self,
        path: str | None = None,
        config: dict[str, Any] | None = None,
        select_layer: int = -2,
        dtype: str = "float32",
        attn_implementation: str | None = None,
        gradient_checkpointing: bool = False,
        downsample: bool = False,
    ) -> None:
        super().__init__()
        if (path is None) == (config is None):
            raise ValueError(f"{self.kind_name}: give exactly one of 'path' (a local checkpoint folder) or 'config' "
                             f"(inline config for random init); got path={path!r}, config={config!r}")
        torch_dtype = _dtype(dtype, self.kind_name)
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        mean, std, crop = self.default_mean, self.default_std, self.default_center_crop
        if path is not None:
            folder = Path(path).expanduser()
            if not folder.is_dir():
                raise FileNotFoundError(f"{self.kind_name}: checkpoint folder {str(folder)!r} does not exist")
            model = _transformers(self.model_class).from_pretrained(str(folder), local_files_only=True, dtype=torch_dtype, **extra)
            mean, std, crop = _read_preprocessor(folder, mean, std, crop)
        else:
            cfg = _transformers(self.config_class)(**dict(config), **extra)
            model = _transformers(self.model_class)(cfg).to(torch_dtype)
        vcfg = model.config
        self.image_size = int(vcfg.image_size)
        patch = int(vcfg.patch_size)
        # the patch convolution floors, as the tower's own position table does: SigLIP-384/14 (LLaVA-OneVision)
        # sees a 27x27 grid of a 384 px frame, its last 6 pixel rows and columns unused
        side = self.image_size // patch
        self.grid = (side, side)
        self.patch_size = patch
        self.downsample = bool(downsample)
        self.width = int(vcfg.hidden_size)
        self.select_layer = int(select_layer)
        self.kept_layers = _kept_layers(self.select_layer, int(vcfg.num_hidden_layers), self.kind_name)
        self.center_crop = bool(crop)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        _strip(model, self.kept_layers)
        if gradient_checkpointing:
            enable_checkpointing(model)
        self.model = model

    # -- preprocessing ------------------------------------------------------------------
    def preprocess(self, frames: Tensor) -> Tensor:
        """uint8 ``[F, H, W, 3]`` frames -> normalised ``[F, 3, S, S]`` in the tower's dtype (``S = image_size``).

        Resizes the shorter side to ``S`` (bicubic, antialiased) and centre-crops, or resizes
        straight to ``S x S`` when the checkpoint's processor does not crop (SigLIP).
        """
        if frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"{self.kind_name}: expected frames of shape [F, H, W, 3], got {tuple(frames.shape)}")
        if frames.dtype != torch.uint8:
            raise ValueError(f"{self.kind_name}: expected uint8 frames, got {frames.dtype}")
        x = frames.permute(0, 3, 1, 2).float().div_(255.0)
        s = self.image_size
        h, w = x.shape[-2:]
        if self.center_crop:
            scale = s / min(h, w)
            size = (max(s, round(h * scale)), max(s, round(w * scale)))
            if size != (h, w):
                x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
            top, left = (x.shape[-2] - s) // 2, (x.shape[-1] - s) // 2
            x = x[..., top : top + s, left : left + s]
        elif (h, w) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bicubic", antialias=True, align_corners=False)
        x = (x.clamp_(0.0, 1.0) - self.mean) / self.std
        return x.to(self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- downsampling before the tower ---------------------------------------------------
    def downsample_grid(self, tokens: int) -> tuple[int, int]:
        """The patch grid ``(a, b)``, ``a*b <= tokens``, frames are resized to for a budget of ``tokens``
        per frame: :func:`dynvlm.kernels.pool.pool_shape` on :attr:`grid` (default tolerance), the
        grid ``pool`` and ``bilinear`` reduce to, so the three compare at the same token counts."""
        from dynvlm.kernels.pool import pool_shape

        return pool_shape(int(tokens), self.grid)

    def downsample_tokens(self, tokens: int) -> int:
        """``a*b`` of :meth:`downsample_grid`: the exact tokens per frame a budget of ``tokens`` yields."""
        a, b = self.downsample_grid(tokens)
        return a * b

    def resize_to_grid(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        """Preprocessed ``[F, 3, S, S]`` -> ``[F, 3, a*patch, b*patch]`` for the patch grid ``(a, b)``.

        Bicubic with antialiasing (the filter :meth:`preprocess` resizes with), in float32, back in
        the input's dtype; the full grid returns ``pixels`` itself.
        """
        a, b = int(grid[0]), int(grid[1])
        if (a, b) == tuple(self.grid):
            return pixels
        size = (a * self.patch_size, b * self.patch_size)
        out = F.interpolate(pixels.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
        return out.to(pixels.dtype)

    # -- forward --------------------------------------------------------------------------
    def forward(self, frames: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """Preprocessed ``[F, 3, a*patch, b*patch]`` (``[F, 3, S, S]`` for the full grid) -> hidden state of
        ``select_layer`` without CLS, ``[F, a*b, C]``.

        ``grid`` is the patch grid ``(a, b)`` of the frames (default :attr:`grid`, i.e. ``[F, 3, S, S]``
        in and ``[F, N, C]`` out); a smaller one (frames from :meth:`resize_to_grid`) gets the
        tower's position embeddings interpolated to it (``interpolate_pos_encoding``).
        """
        a, b = (int(grid[0]), int(grid[1])) if grid is not None else self.grid
        full = (a, b) == tuple(self.grid)  # frames of image_size, which need not be a multiple of the patch
        size = (self.image_size, self.image_size) if full else (a * self.patch_size, b * self.patch_size)
        if frames.dim() != 4 or frames.shape[1] != 3 or tuple(frames.shape[-2:]) != size:
            raise ValueError(f"{self.kind_name}: expected preprocessed frames [F, 3, {size[0]}, {size[1]}] for the "
                             f"{a}x{b} patch grid, got {tuple(frames.shape)}; call preprocess() first"
                             f"{' and resize_to_grid()' if (a, b) != self.grid else ''}")
        vm = getattr(self.model, "vision_model", self.model)
        if full:
            h = vm.embeddings(frames.to(self.dtype))
        else:
            h = vm.embeddings(frames.to(self.dtype), interpolate_pos_encoding=True)
        if hasattr(vm, "pre_layrnorm"):
            h = vm.pre_layrnorm(h)
        if self.kept_layers:
            h = vm.encoder(inputs_embeds=h).last_hidden_state
        return h[:, 1:] if self.has_cls else h


def enable_checkpointing(model: Any) -> None:
    """Turn on activation (gradient) checkpointing under either ``transformers`` name (5.x renamed it)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _kept_layers(select_layer: int, num_layers: int, name: str) -> int:
    """Number of transformer layers whose output ``hidden_states[select_layer]`` depends on."""
    n_states = num_layers + 1  # embeddings + one per layer
    if not -n_states <= select_layer < n_states:
        raise ValueError(f"{name}: select_layer={select_layer} is outside [{-n_states}, {n_states - 1}] "
                         f"for a tower with {num_layers} layers")
    return select_layer % n_states


def _strip(model: nn.Module, kept_layers: int) -> None:
    """Drop layers after the selected one and the pooling heads (their outputs are never used)."""
    vm = getattr(model, "vision_model", model)  # transformers 4.x nests the tower; 5.x does not
    vm.encoder.layers = nn.ModuleList(list(vm.encoder.layers)[:kept_layers])
    vm.post_layernorm = nn.Identity()
    if getattr(vm, "use_head", False):
        vm.use_head = False
        del vm.head


def _read_preprocessor(folder: Path, mean, std, crop) -> tuple[tuple, tuple, bool]:
    """Mean/std/centre-crop flag from ``preprocessor_config.json`` when the folder has one."""
    file = folder / "preprocessor_config.json"
    if not file.is_file():
        return mean, std, crop
    try:
        data: Mapping[str, Any] = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"cannot parse {file}: {exc}") from None
    mean = tuple(data.get("image_mean", mean))
    std = tuple(data.get("image_std", std))
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{file}: image_mean and image_std must have 3 values, got {mean} and {std}")
    return mean, std, bool(data.get("do_center_crop", crop))


def _dtype(name: str, who: str) -> torch.dtype:
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ValueError(f"{who}: dtype must be one of {', '.join(table)}, got {name!r}")
    return table[name]


def _transformers(name: str) -> Any:
    """``transformers.<name>``, imported on first use (the import costs seconds)."""
    import transformers

    return getattr(transformers, name)
