"""The shape of a run's config tree.

One omegaconf tree per run: ``model.{encoder,compressor,llm,projector}``, ``budget``,
``data``, ``trainer`` (keyword arguments of ``lightning.Trainer``), ``optim``, ``stage``,
``eval``, plus ``name``, ``seed``, ``output_dir``, ``base`` and ``sweep``.

Every section below is a dataclass: :mod:`dynvlm.config` rejects keys that are not fields
(naming the valid ones) and values whose type does not match the annotation. Components
(``model.encoder`` etc.) are ``{name: <registered name>, **kwargs}`` and are validated
against the registered class's ``__init__`` signature instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

#: component kind of each ``model.*`` key that holds a plugin spec
COMPONENT_KEYS: dict[str, str] = {"encoder": "encoder", "compressor": "compressor", "llm": "llm", "prompt": "prompt"}

#: constructor arguments the core supplies (never from YAML), per component kind
CORE_SUPPLIED: dict[str, tuple[str, ...]] = {"compressor": ("dim",), "encoder": (), "llm": (), "prompt": ()}

#: the prompt format of a model config without ``model.prompt``
DEFAULT_PROMPT = "dynvlm"

#: plain ``model.*`` keys (not component specs) and their types. ``compressor_at``: where the compressor
#: runs, on the encoder's tokens (width C, dynvlm's walk, the default) or on the projected ones (width D,
#: LLaVA-OneVision's order: project every patch, then pool)
MODEL_OPTIONS: dict[str, Any] = {"compressor_at": Literal["before_projector", "after_projector"]}


@dataclass
class ProjectorConfig:
    """2-layer MLP with GELU from encoder width C to LLM width D (LLaVA's mlp2x_gelu)."""

    depth: int = 2
    hidden: int | None = None  # hidden width; None = D
    # a learned D-vector appended after each video's visual tokens (LLaVA-OneVision's image_newline);
    # it trains with the projector and takes one more LLM position per video
    separator: bool = False


@dataclass
class BudgetConfig:
    """Visual-token budget: a registered policy (default ``dynamic``: ``M = clamp(max_tokens // T,
    min_tokens_per_frame, N)``) plans each sample's frames and tokens per frame within ``max_tokens``."""

    # a registered budget policy: its name, or {name: <policy>, **its own keys} (see dynvlm.budget)
    policy: str | dict[str, Any] = "dynamic"
    max_tokens: int = 12000  # N_max, total visual tokens per sample
    min_tokens_per_frame: int = 1  # m_min
    tokens_per_frame: int | None = None  # fixed M for ablations (the dynamic policy then keeps N_max // M frames)
    fps: float = 1.0  # frame sampling rate before the max_frames cap
    max_frames: int = 128  # T cap; uniform sampling beyond it
    random_in_training: bool = True  # draw M in [m_min, budget value] per training batch


@dataclass
class DataConfig:
    """Where samples come from and how they are loaded."""

    train: str | None = None  # LLaVA-style JSON/JSONL annotation file
    val: str | None = None
    test: str | None = None  # multiple-choice eval file (VideoMME/MLVU/... shapes)
    root: str | None = None  # folder media paths are relative to (default: the annotation's folder)
    batch_size: int = 8
    eval_batch_size: int | None = None
    num_workers: int = 0
    on_error: Literal["skip", "raise"] = "skip"
    backend: Literal["auto", "decord", "pyav"] = "auto"
    synth: dict[str, Any] | None = None  # generate synthetic data first: kwargs of dynvlm.data.synth (incl. out)
    max_samples: int | None = None  # cap on items per split (the first ones)
    shuffle: bool = True  # shuffle training items each epoch
    mc_instruction: str | None = None  # line after MC options; None = "Answer with the option's letter ..."
    cache: bool | None = None  # keep decoded frames in memory; None = on for data.synth, off otherwise
    benchmark: str = "auto"  # auto (by the records' fields), generic (dynvlm's format) or a name (dynvlm.data.benchmarks)


@dataclass
class OptimConfig:
    """AdamW with warm-up and a cosine or constant schedule."""

    lr: float = 1e-3
    encoder_lr_ratio: float = 0.2  # encoder lr = lr * ratio
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float | None = 1.0  # max gradient norm (used when trainer.gradient_clip_val is unset)
    aux_weight: float = 1.0  # weight of the compressor's auxiliary loss
    # the LM head and the loss run only on answer (label) positions: memory no longer grows with the
    # prompt's length times the vocabulary; same loss value (off by default: float sums in another order)
    answer_only_loss: bool = False


@dataclass
class StageConfig:
    """Which modules train; ``resume_from`` loads a previous stage's checkpoint first."""

    name: Literal["pretrain", "image_sft", "video_sft", "custom"] = "video_sft"
    trainable: list[str] | None = None  # subset of encoder, compressor, projector, llm (required for `custom`)
    resume_from: str | None = None  # a .ckpt (or .safetensors state dict) of the previous stage
    checkpoint_every_n_steps: int | None = None  # also write last.ckpt every n steps (resume points)


@dataclass
class StrategyConfig:
    """``trainer.strategy`` given as a mapping: how training is spread over devices (:mod:`dynvlm.run.strategy`).

    A plain string (``ddp``, ``fsdp``, ``auto``, ...) is still passed to Lightning as it is.
    """

    name: Literal["auto", "ddp", "fsdp", "deepspeed"] = "ddp"
    # FSDP units: ``layers`` = one unit per decoder layer and per vision-tower layer (plus the root);
    # ``none`` = the whole model is one unit (every parameter is gathered at once)
    wrap: Literal["layers", "none"] = "layers"
    activation_checkpointing: bool = False  # recompute each decoder / vision layer in backward
    sharding: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = "FULL_SHARD"  # FSDP
    state_dict: Literal["sharded", "full"] = "sharded"  # FSDP checkpoints: one shard per rank, or one file
    zero_stage: Literal[1, 2, 3] = 2  # DeepSpeed ZeRO stage
    cpu_offload: bool = False  # FSDP / DeepSpeed: keep sharded parameters (and ZeRO optimizer states) in CPU memory
    process_group_backend: str | None = None  # e.g. gloo; default: nccl on GPUs, gloo on CPU


@dataclass
class EvalConfig:
    """How evaluation scores multiple-choice questions."""

    # loglik: likelihood of each option's letter; cloze: of each option's text after the bare
    # question (no option list); generate: free generation + answer-letter extraction
    # auto: generate for a benchmark's file (its lmms-eval task generates), loglik for dynvlm's own
    mode: Literal["auto", "loglik", "cloze", "generate"] = "auto"
    max_new_tokens: int = 16
    # task: read answers as the benchmark's lmms-eval task does; strict: dynvlm.answers.extract_choice
    reading: Literal["task", "strict"] = "task"


#: top-level sections validated as dataclasses
SECTIONS: dict[str, type] = {
    "budget": BudgetConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "stage": StageConfig,
    "eval": EvalConfig,
}

#: plain top-level keys and their types
TOP_LEVEL: dict[str, Any] = {
    "name": str,
    "seed": int,
    "output_dir": str,
    "base": str,
    "sweep": dict | list[dict],  # one grid, or a list of grids whose points are joined
    "model": dict,
    "trainer": dict,
    **{k: dict for k in SECTIONS},
}

MODEL_KEYS = (*COMPONENT_KEYS, "projector", *MODEL_OPTIONS)

T = TypeVar("T")


def section(cls: type[T], data: T | Mapping[str, Any] | None, name: str) -> T:
    """A ``cls`` dataclass from an instance, a mapping (plain or omegaconf) or ``None`` (defaults).

    Unknown keys raise ``ValueError`` naming the key and the valid ones: code that builds
    sections without :func:`dynvlm.load_config` gets the same guard as YAML does.
    """
    if data is None:
        return cls()
    if isinstance(data, cls):
        return data
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(data, DictConfig):
            data = OmegaConf.to_container(data, resolve=True)  # lists come back as plain lists
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if not isinstance(data, Mapping):
        raise TypeError(f"{name}: expected {cls.__name__}, a mapping or a DictConfig, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    values = dict(data)
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{name}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(names))}")
    return cls(**values)
