"""Measured inference cost of a :class:`~dynvlm.model.video_llm.VideoLLM`: FLOPs per part, prefill latency, KV cache, memory.

:func:`measure_cost` runs the prefill of each sample alone (batch of one, no padding) -- the
visual path (encoder ``[F, N, C]`` -> compressor ``[F, M, C]`` -> projector ``[F, M, D]``), the
prompt with the visual tokens spliced in, then the LLM forward that fills the KV cache and yields
the first token's logits -- and reports, as the mean per sample:

- ``flops_encoder``, ``flops_compressor``, ``flops_projector``, ``flops_llm_prefill``: counted with
  :class:`torch.utils.flop_counter.FlopCounterMode` while the real modules run (measured, not a
  formula). It counts matrix products, convolutions and attention (``2 * m * n * k`` per product;
  attention as its two products ``QK^T`` and ``AV`` over the full ``L x L`` square, causal or not);
  pooling, norms, activations and other elementwise ops count 0 (so ``pool`` shows 0). CPU
  attention (``_scaled_dot_product_flash_attention_for_cpu``) is counted with torch's own
  attention formula, which its registry only applies to the GPU kernels. Compressors with a kernel
  ``backend`` switch run their PyTorch reference during the count (a Triton kernel's products are
  invisible to the counter), so counts do not depend on the device; timing uses the configured backend.
  ``flops_prefill`` is the total of the pass (the parts plus ``flops_other``, normally 0).
- ``lm_head_positions``: ``"last"`` when the LLM's prefill computes logits for the last position
  only (a Hugging Face model whose ``forward`` takes ``logits_to_keep``: what ``generate`` does),
  ``"all"`` when the plugin's ``forward`` computes them for every position.
- ``prefill_ms`` (and its parts ``visual_ms``, ``llm_prefill_ms``): median wall time over
  ``repeats`` runs after a warm-up run; ``None`` on the meta device.
- ``kv_bytes``: *computed* from the LLM config and the real prompt length:
  ``layers x 2 x kv_heads x head_dim x prompt_tokens x dtype bytes`` (``None`` when the LLM has no
  Hugging Face config).
- ``peak_mem_bytes`` / ``peak_mem_delta_bytes``: the peak during one prefill, absolute and above
  what was in use just before; ``peak_mem_source`` says which counter: CUDA
  ``max_memory_allocated``, or on CPU the process's peak resident set ``VmHWM`` (reset before the
  run through ``/proc/self/clear_refs``), or ``ru_maxrss`` where that reset is not possible (then
  the delta is a lower bound). ``None`` on the meta device. The peak is the max over samples.
- ``visual_tokens``, ``prompt_tokens`` (LLM positions of the prefill, visual ones included),
  ``frames``, ``tokens_per_frame``.
- ``precision``: the ``trainer.precision`` the prefills ran under (``None``: the model as it is). Under
  ``*-mixed`` they run in autocast, as Lightning's loops run the model; ``dynvlm cost``, ``dynvlm eval``
  and sweeps pass the config's ``trainer.precision``.

``dynvlm cost CONFIG [key=value ...]`` (:func:`cost_cli`) prints these for a synthetic video of
``--duration`` seconds, without data or weights: a model whose checkpoints are absent (or with
``--meta``) is built on the meta device from its ``config.json`` or a built-in description of
known checkpoints (:data:`KNOWN_CONFIGS`); see :func:`resolve_for_cost`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dynvlm.budget import FramePlan, uniform_indices
from dynvlm.records import Batch, Sample, Turn, question_turns
from dynvlm.util.memory import measure_peak
from dynvlm.util.tables import format_table
from dynvlm.util.timing import PartMeter

#: the parts whose FLOPs are reported, in pipeline order
FLOP_PARTS = ("encoder", "compressor", "projector", "llm_prefill")
#: the question of the synthetic sample of ``dynvlm cost``
COST_QUESTION = "<video>\nWhat happens in the video?"

#: Published architectures of checkpoints the recipes name, keyed by the checkpoint folder's name:
#: ``dynvlm cost`` builds these on the meta device when the folder (or its ``config.json``) is
#: absent. Values are the ``config.json`` of the Hugging Face releases (vision tower part for CLIP).
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "clip-vit-large-patch14-336": {
        "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
        "image_size": 336, "patch_size": 14, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
        "projection_dim": 768, "model_type": "clip_vision_model",
    },
    "clip-vit-large-patch14": {
        "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
        "image_size": 224, "patch_size": 14, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
        "projection_dim": 768, "model_type": "clip_vision_model",
    },
    "Qwen2.5-7B-Instruct": {
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 32768,
        "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False,
        "use_sliding_window": False, "model_type": "qwen2",
    },
}
KNOWN_CONFIGS["Qwen2.5-7B"] = dict(KNOWN_CONFIGS["Qwen2.5-7B-Instruct"])

#: ``config.json`` keys that describe the file, not the architecture (dropped before building)
_META_KEYS = {"architectures", "transformers_version", "torch_dtype", "dtype", "_name_or_path", "auto_map",
              "model_type", "bos_token_id", "eos_token_id", "pad_token_id"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


# -- FLOP counting ---------------------------------------------------------------------------


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Torch's attention formula (``QK^T`` + ``AV``) for the CPU fused attention kernel."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter() -> Any:
    """A ``FlopCounterMode`` (no printing) that also counts CPU fused attention.

    torch registers FLOP formulas for the CUDA attention kernels only; on CPU,
    ``scaled_dot_product_attention`` runs ``_scaled_dot_product_flash_attention_for_cpu``, which
    would count 0 (measured: a 1-layer Qwen2 prefill lost its ``4 * H * L^2 * head_dim`` attention FLOPs).
    """
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _cpu_sdpa_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """FLOPs of ``fn(*args, **kwargs)`` as :func:`flop_counter` counts them (matmuls, convs, attention)."""
    with flop_counter() as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


# -- one prefill -----------------------------------------------------------------------------


def _is_meta(model: nn.Module) -> bool:
    p = next(model.parameters(), None)
    return p is not None and p.device.type == "meta"


def _prompt_turns(sample: Sample) -> list[Turn]:
    """The conversation up to the last question (a trailing answer is what the model would generate)."""
    return question_turns(sample.conversation)


def llm_prefill(llm: nn.Module, embeds: Tensor) -> tuple[Any, str]:
    """One unpadded prefill ``[1, L, D]`` through the LLM; returns its output and where logits are computed.

    A Hugging Face causal LM under the plugin (``llm.model`` taking ``logits_to_keep``) runs as
    ``generate`` runs its first step: KV cache on, logits of the last position only (``"last"``).
    Any other LLM runs its ``forward(embeds, attention_mask)``: logits for every position (``"all"``).
    """
    hf = getattr(llm, "model", None)
    forward = getattr(hf, "forward", None)
    if forward is not None and "logits_to_keep" in inspect.signature(forward).parameters:
        # one unpadded sequence: no attention mask needed (a mask would be all ones; building
        # the causal mask from it reads its values, which the meta device does not have)
        return hf(inputs_embeds=embeds, use_cache=True, logits_to_keep=1), "last"
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    return llm(embeds, mask), "all"


def _prefill(model: Any, sample: Sample, plan: FramePlan, tick: Callable[[str], None]) -> tuple[int, str]:
    """Frames -> first-token logits for one sample; calls ``tick`` after the visual path and the LLM.

    Returns ``(prompt_tokens, lm_head_positions)``.
    """
    visual = model.visual_features([sample], [plan]).tokens  # [T * M, D]
    tick("visual")
    encoded = model.encode_prompts([sample], [plan], [_prompt_turns(sample)], generation_prompt=True)
    batch = model.prompts.collate(encoded, "left")
    if _is_meta(model):
        # splice() counts the visual positions from the mask's values, which meta tensors lack;
        # the shapes (all that meta measures) are the same without the scatter
        embeds = model.llm.embed(batch.input_ids.to(model.device))
    else:
        embeds = model.splice(batch, visual)
    _, where = llm_prefill(model.llm, embeds)
    tick("llm")
    return int(batch.input_ids.shape[1]), where


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- KV cache ----------------------------------------------------------------------------------


def kv_cache_bytes(llm: nn.Module, positions: int, batch: int = 1) -> tuple[int | None, str]:
    """KV-cache bytes for ``positions`` tokens, computed from the LLM's config; and how.

    ``layers x 2 (K and V) x kv_heads x head_dim x positions x batch x bytes per element`` of the
    LLM's parameter dtype. ``(None, reason)`` when the LLM has no Hugging Face config to read.
    """
    cfg = getattr(getattr(llm, "model", None), "config", None)
    if cfg is None:
        return None, "the LLM has no Hugging Face config (llm.model.config)"
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    layers = int(cfg.num_hidden_layers)
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    p = next(llm.parameters())
    size = p.element_size()
    how = (f"computed from the config: {layers} layers x 2 x {kv_heads} kv heads x {head_dim} head dim "
           f"x {positions} positions x {size} bytes ({str(p.dtype).removeprefix('torch.')})")
    return layers * 2 * kv_heads * head_dim * positions * batch * size, how


# -- the measurement ---------------------------------------------------------------------------


def measure_cost(model: Any, samples: Batch | Sequence[Sample], repeats: int = 5, warmup: int = 1,
                 latency: bool = True, memory: bool = True, precision: str | None = None) -> dict[str, Any]:
    """Prefill cost of ``model`` on ``samples``, each run alone (batch of one); means per sample.

    With ``precision`` (a ``trainer.precision`` value) every prefill runs in the context Lightning's
    precision plugin runs the model's forward in (:func:`dynvlm.model.parallel.forward_context`): under
    ``bf16-mixed`` autocast in bf16, as ``dynvlm eval`` / ``test`` and training run it, so latency, memory
    and KV bytes are those of that precision. ``*-true`` half and ``64-true`` need the model in that dtype
    already (Lightning's loops cast it; :func:`build_for_cost` does for ``dynvlm cost``). ``None``: the
    model runs as it is, with no context.

    Args:
        model: a :class:`~dynvlm.model.video_llm.VideoLLM` (any device, including ``meta``); put in eval mode
            while measuring (its mode is restored after).
        samples: :class:`Sample` s with uint8 ``[T, H, W, 3]`` frames; the budget's evaluation plan
            picks frames and ``M``; a trailing answer turn is dropped (it is what the model would say).
        repeats: timed runs per sample (after ``warmup`` untimed ones); the median is reported.
        warmup: untimed runs per sample before timing (first runs at a new shape are slower).
        latency: time the prefill (skipped on the meta device).
        memory: measure peak memory of one prefill (skipped on the meta device).
        precision: ``trainer.precision`` to run under, or ``None``.

    Returns:
        a dict (see the module docstring for each key): ``samples``, ``device``, ``frames``,
        ``tokens_per_frame``, ``visual_tokens``, ``prompt_tokens``, ``flops_<part>`` for each of
        :data:`FLOP_PARTS`, ``flops_other``, ``flops_prefill``, ``lm_head_positions``, ``prefill_ms``,
        ``visual_ms``, ``llm_prefill_ms``, ``kv_bytes``, ``kv_source``, ``peak_mem_bytes``,
        ``peak_mem_delta_bytes``, ``peak_mem_source``, ``precision`` (the argument). Counts are ints when
        every sample agrees (one sample), else float means.

    Raises:
        ConfigError: ``precision`` is not one dynvlm can reproduce, or asks for a ``*-true`` dtype the
            model's parameters are not in; each names ``trainer.precision`` and what is valid.
    """
    samples = list(samples.samples if isinstance(samples, Batch) else samples)
    if not samples:
        raise ValueError("measure_cost: no samples")
    if repeats < 1:
        raise ValueError(f"measure_cost: repeats must be >= 1, got {repeats}")
    meta = _is_meta(model)
    device = model.device
    context = _precision_context(model, precision)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), context:
            plans = model.plan(samples)
            rows = [_measure_one(model, s, p, repeats, warmup, latency and not meta, memory and not meta, device)
                    for s, p in zip(samples, plans)]
    finally:
        model.train(was_training)
    out: dict[str, Any] = {"samples": len(rows), "device": "meta" if meta else str(device), "precision": precision}
    for key in ("frames", "tokens_per_frame", "visual_tokens", "prompt_tokens",
                *(f"flops_{p}" for p in FLOP_PARTS), "flops_other", "flops_prefill", "kv_bytes",
                "prefill_ms", "visual_ms", "llm_prefill_ms"):
        out[key] = _mean([r[key] for r in rows])
    out["lm_head_positions"] = rows[0]["lm_head_positions"]
    out["kv_source"] = rows[0]["kv_source"]
    peaks = [r for r in rows if r["peak_mem_bytes"] is not None]
    best = max(peaks, key=lambda r: r["peak_mem_bytes"]) if peaks else None
    out["peak_mem_bytes"] = best["peak_mem_bytes"] if best else None
    out["peak_mem_delta_bytes"] = best["peak_mem_delta_bytes"] if best else None
    out["peak_mem_source"] = best["peak_mem_source"] if best else None
    return out


def _precision_context(model: nn.Module, precision: str | None) -> contextlib.AbstractContextManager[Any]:
    """The forward context of ``precision`` on the model's device (:func:`dynvlm.model.parallel.forward_context`),
    after checking that the model is in the dtype a ``*-true`` precision's loops cast it to."""
    from dynvlm.config import ConfigError
    from dynvlm.model.parallel import forward_context, loop_dtype

    if precision is None:
        return contextlib.nullcontext()
    context = forward_context(precision, model.device)  # raises for a precision that cannot be reproduced
    wanted = loop_dtype(precision)
    held = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.is_floating_point()})
    if wanted is not None and held != [str(wanted).removeprefix("torch.")]:
        # Lightning's loops cast the whole model to this dtype; measuring it as it is would report another precision
        name = str(wanted).removeprefix("torch.")
        raise ConfigError(f"trainer.precision {precision!r} runs the whole model in {name}, but its parameters are "
                          f"{', '.join(held)}: cast it first (model.to(torch.{name}), as Lightning's loops and "
                          "dynvlm.measure.cost.build_for_cost do)")
    return context


def _mean(values: Sequence[Any]) -> Any:
    if any(v is None for v in values):
        return None
    if all(v == values[0] for v in values):
        return values[0]
    return statistics.fmean(values)


@contextlib.contextmanager
def _reference_kernels(model: nn.Module) -> Iterator[None]:
    """Modules with a kernel ``backend`` switch (``auto|triton|torch``) run their PyTorch reference while
    FLOPs are counted: ``FlopCounterMode`` sees aten ops only, so a Triton kernel's products would count 0
    and the same model would count differently on GPU and CPU."""
    saved = [(m, m.backend) for m in model.modules() if isinstance(getattr(m, "backend", None), str)]
    try:
        for m, _ in saved:
            m.backend = "torch"
        yield
    finally:
        for m, backend in saved:
            m.backend = backend


def _measure_one(model: Any, sample: Sample, plan: FramePlan, repeats: int, warmup: int,
                 latency: bool, memory: bool, device: torch.device) -> dict[str, Any]:
    """FLOPs, latency, memory and KV bytes of one sample's prefill."""
    # FLOPs: one pass under the counter, attributed to the parts by forward hooks
    with _reference_kernels(model), flop_counter() as counter:
        parts = PartMeter({"encoder": model.encoder, "compressor": model.compressor, "projector": model.projector},
                          counter.get_total_flops)
        marks: dict[str, int] = {}
        try:
            positions, where = _prefill(model, sample, plan,
                                        lambda name: marks.__setitem__(name, int(counter.get_total_flops())))
        finally:
            parts.remove()
    total = int(counter.get_total_flops())
    row: dict[str, Any] = {f"flops_{k}": int(v) for k, v in parts.totals.items()}
    row["flops_llm_prefill"] = marks["llm"] - marks["visual"]
    row["flops_prefill"] = total
    row["flops_other"] = total - sum(row[f"flops_{p}"] for p in FLOP_PARTS)
    row.update(frames=len(plan.indices), tokens_per_frame=plan.tokens, visual_tokens=plan.visual_tokens,
               prompt_tokens=positions, lm_head_positions=where)
    row["kv_bytes"], row["kv_source"] = kv_cache_bytes(model.llm, positions)
    row.update(prefill_ms=None, visual_ms=None, llm_prefill_ms=None, peak_mem_bytes=None,
               peak_mem_delta_bytes=None, peak_mem_source=None)
    if latency:
        for _ in range(warmup):
            _prefill(model, sample, plan, lambda name: None)
        runs = []
        for _ in range(repeats):
            stamps: dict[str, float] = {}

            def tick(name: str, stamps: dict[str, float] = stamps) -> None:
                _sync(device)
                stamps[name] = time.perf_counter()

            _sync(device)
            t0 = time.perf_counter()
            _prefill(model, sample, plan, tick)
            runs.append((stamps["llm"] - t0, stamps["visual"] - t0, stamps["llm"] - stamps["visual"]))
        row["prefill_ms"], row["visual_ms"], row["llm_prefill_ms"] = (
            round(1000 * statistics.median(r[i] for r in runs), 3) for i in range(3))
    if memory:
        row["peak_mem_bytes"], row["peak_mem_delta_bytes"], row["peak_mem_source"] = measure_peak(
            lambda: _prefill(model, sample, plan, lambda name: None), device)
    return row


# -- the synthetic input -------------------------------------------------------------------------


def synthetic_video(model: Any, duration: float, question: str = COST_QUESTION, seed: int = 0) -> Sample:
    """A video sample of ``duration`` seconds as the reader would decode it for ``model``'s budget.

    Frames are sampled at ``budget.fps`` (``floor(duration * fps)`` frames, at least one) and capped
    at ``budget.max_frames`` with the reader's uniform rule; each is uint8 noise
    ``[encoder.image_size, encoder.image_size, 3]`` (no resize needed). The budget's plan then
    decides kept frames and ``M`` as for real data.
    """
    if duration <= 0:
        raise ValueError(f"duration must be > 0 seconds, got {duration}")
    cfg = model.budget.cfg
    fps = cfg.fps if cfg.fps and cfg.fps > 0 else 1.0
    n = max(1, math.floor(duration * fps + 1e-9))
    picked = uniform_indices(n, cfg.max_frames) if cfg.max_frames else list(range(n))
    size = int(model.encoder.image_size)
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (len(picked), size, size, 3), dtype=torch.uint8, generator=gen)
    return Sample(frames, [i / fps for i in picked], [Turn("human", question)], kind="video",
                  id=f"synthetic-{duration:g}s", meta={"duration": float(duration)})


# -- building a model without its weights ---------------------------------------------------------


def _has_weights(folder: Path) -> bool:
    return folder.is_dir() and any(any(folder.glob(g)) for g in _WEIGHT_GLOBS)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        from dynvlm.config import ConfigError

        raise ConfigError(f"cannot read model config {str(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        from dynvlm.config import ConfigError

        raise ConfigError(f"{str(path)!r}: expected a JSON object")
    return data


def _architecture(data: Mapping[str, Any], key: str) -> tuple[dict[str, Any], str | None]:
    """Config kwargs from a ``config.json``-like mapping (an encoder's ``vision_config``, an LLM's
    ``text_config`` when nested, as in a LLaVA-OneVision ``config.json``) and its ``model_type``."""
    nested = {"encoder": "vision_config", "llm": "text_config"}.get(key)
    if nested and isinstance(data.get(nested), Mapping):
        data = data[nested]
    model_type = data.get("model_type")
    return {k: v for k, v in data.items() if k not in _META_KEYS}, (str(model_type) if model_type else None)


def resolve_for_cost(cfg: Mapping[str, Any], meta: bool = False,
                     config_files: Mapping[str, str | None] | None = None) -> tuple[dict[str, Any], bool, list[str], dict[str, str]]:
    """Make a run config buildable for measuring cost, without weights where they are absent.

    For each of ``model.encoder`` / ``model.llm`` given by ``path:`` (a component whose class also
    takes an inline ``config:``), the architecture comes from, in order:

    1. ``config_files[part]`` (``--encoder-config`` / ``--llm-config``: a ``config.json``) or a
       ``config:`` given with the path (e.g. an override ``model.llm.config.hidden_size=...``);
    2. the checkpoint itself when its folder holds weights and ``meta`` is off (built as for training);
    3. the folder's ``config.json`` (a folder holding only ``config.json`` is enough);
    4. :data:`KNOWN_CONFIGS`, by the folder's name (e.g. ``Qwen2.5-7B-Instruct``);

    otherwise a :class:`~dynvlm.config.ConfigError` names these options. When any part falls back
    to a config (or ``meta`` is set), every part is built from configs on the meta device. A
    folder's tokenizer files are used as the LLM's tokenizer; without them the ``hf`` plugin's
    word-level stand-in counts the text positions (the visual positions are exact either way).
    ``stage.resume_from`` is dropped on meta or when its file is absent (weights do not change counts).

    Returns:
        ``(config, meta, notes, model_types)``: the config to build, whether to build on meta,
        one line per decision for the progress output, and the ``model_type`` each part's source
        names (to check the built model against, :func:`check_architectures`).
    """
    from dynvlm.config import ConfigError, constructor_params
    from dynvlm.model.video_llm import SYNTHETIC_VOCABULARY
    from dynvlm.registry import get_registry
    from dynvlm.util.configs import config_dict

    data = config_dict(cfg)
    model_cfg = data.setdefault("model", {})
    files = dict(config_files or {})
    registry = get_registry()
    sources: dict[str, tuple[str, dict[str, Any] | None, str | None, Path | None]] = {}
    for part, kind in (("encoder", "encoder"), ("llm", "llm")):
        spec = model_cfg.get(part) or {}
        path = spec.get("path")
        file = files.get(part)
        if path is None and file is None:
            continue  # an inline config (or a component without a path): built as given
        cls = registry.get(kind, spec["name"]).cls if spec.get("name") else None
        takes_config = cls is not None and "config" in constructor_params(cls, kind)[0]
        folder = Path(str(path)).expanduser() if path is not None else None
        if file is not None:
            arch, mtype = _architecture(_read_json(Path(file)), part)
            sources[part] = (f"config from {file}", arch, mtype, folder)
        elif spec.get("config") is not None:
            arch, mtype = _architecture(dict(spec["config"]), part)
            sources[part] = (f"inline model.{part}.config", arch, mtype, folder)
        elif folder is not None and not meta and _has_weights(folder):
            sources[part] = (f"checkpoint {folder}", None, None, folder)
        elif folder is not None and (folder / "config.json").is_file():
            arch, mtype = _architecture(_read_json(folder / "config.json"), part)
            sources[part] = (f"{folder / 'config.json'} (no weights loaded)", arch, mtype, folder)
        elif folder is not None and folder.name in KNOWN_CONFIGS:
            arch, mtype = _architecture(KNOWN_CONFIGS[folder.name], part)
            sources[part] = (f"built-in config of {folder.name!r} (dynvlm.measure.cost.KNOWN_CONFIGS; {folder} is absent)",
                             arch, mtype, folder)
        else:
            raise ConfigError(
                f"model.{part}.path: {str(folder)!r} holds no weights and no config.json, and {folder.name!r} is not "
                f"a known architecture ({', '.join(sorted(KNOWN_CONFIGS))}); to measure cost without weights, put the "
                f"checkpoint's config.json there, pass --{part}-config FILE, or override model.{part}.config.<key>=...")
        if sources[part][1] is not None and not takes_config:
            raise ConfigError(f"model.{part} {spec.get('name')!r} cannot be built from a config (its class takes no "
                              "'config' argument); cost needs its checkpoint")
    meta = meta or any(arch is not None for _, arch, _, _ in sources.values())
    notes, types = [], {}
    for part, (how, arch, mtype, folder) in sources.items():
        spec = dict(model_cfg[part])
        if meta and arch is None:  # weights present but meta wanted: the folder's config.json
            assert folder is not None
            if not (folder / "config.json").is_file():
                raise ConfigError(f"model.{part}.path: {str(folder)!r} has no config.json to build on meta from")
            arch, mtype = _architecture(_read_json(folder / "config.json"), part)
            how = f"{folder / 'config.json'} (meta: weights not loaded)"
        if arch is not None:
            spec.pop("path", None)
            spec["config"] = arch
            if part == "llm" and spec.get("tokenizer") is None and spec.get("vocabulary") is None:
                if folder is not None and any((folder / f).is_file() for f in _TOKENIZER_FILES):
                    spec["tokenizer"] = str(folder)
                    how += "; tokenizer from the folder"
                else:
                    spec["vocabulary"] = SYNTHETIC_VOCABULARY
                    how += "; text positions counted with the word-level stand-in tokenizer (the real one is absent)"
            if mtype:
                types[part] = mtype
        model_cfg[part] = spec
        notes.append(f"{part}: {how}")
    stage = data.get("stage")
    if isinstance(stage, dict) and stage.get("resume_from"):
        resume = Path(str(stage["resume_from"])).expanduser()
        if meta or not resume.exists():
            data["stage"] = {k: v for k, v in stage.items() if k != "resume_from"}
            notes.append(f"stage.resume_from {str(resume)!r} not loaded ({'meta device' if meta else 'absent'}; "
                         "weights do not change the counts)")
    return data, meta, notes, types


def check_architectures(model: Any, types: Mapping[str, str]) -> None:
    """Raise when a part built from a config is another architecture than its source names
    (e.g. a Llama ``config.json`` built by a plugin whose inline configs are Qwen2)."""
    from dynvlm.config import ConfigError

    for part, wanted in types.items():
        built = getattr(getattr(getattr(model, part, None), "model", None), "config", None)
        got = getattr(built, "model_type", None)
        if got and wanted.split("_")[0] != str(got).split("_")[0]:
            raise ConfigError(f"model.{part}: the config describes a {wanted!r} model, but the plugin builds "
                              f"{got!r} from an inline config; its counts would be another model's")


def build_for_cost(cfg: Mapping[str, Any], meta: bool = False, device: str | None = None,
                   config_files: Mapping[str, str | None] | None = None,
                   log: Callable[[str], None] = lambda s: None) -> Any:
    """A :class:`~dynvlm.model.video_llm.VideoLLM` of ``cfg`` for :func:`measure_cost` (see :func:`resolve_for_cost`).

    On meta every parameter is a shape without storage: building a 7B model takes seconds and no memory.
    Under a ``*-true`` ``trainer.precision`` (``bf16-true``, ``16-true``, ``64-true``) the model is cast to its
    dtype, as Lightning's loops cast it; other precisions keep the dtypes the config builds (measure under
    ``trainer.precision`` with ``measure_cost(..., precision=...)``).
    """
    from dynvlm.model.parallel import loop_dtype, precision_of
    from dynvlm.model.video_llm import VideoLLM

    data, meta, notes, types = resolve_for_cost(cfg, meta=meta, config_files=config_files)
    for line in notes:
        log(line)
    where = "meta" if meta else (device or ("cuda" if torch.cuda.is_available() else "cpu"))
    log(f"building the model on {where}" + (" (no weights: FLOPs and KV bytes only)" if meta else ""))
    t0 = time.perf_counter()
    if meta:
        with torch.device("meta"):
            model = VideoLLM(data)
    else:
        model = VideoLLM(data).to(where)
    check_architectures(model, types)
    precision = precision_of(data.get("trainer"))
    cast = loop_dtype(precision)
    if cast is not None:
        # Lightning's loops run a *-true precision with the whole model cast to its dtype (the fp32 projector too);
        # *-mixed keeps the weights as built (bf16 where the config loads them so, as dynvlm eval runs them)
        model.to(cast)
        log(f"trainer.precision {precision}: every parameter cast to {str(cast).removeprefix('torch.')}, "
            "as Lightning's loops run it")
    log(f"built in {time.perf_counter() - t0:.1f} s")
    return model


# -- output --------------------------------------------------------------------------------------


def human(n: float | None, unit: str = "") -> str:
    """``1.234e13`` -> ``"12.34 T"`` (``unit`` appended); ``None`` -> ``"-"``."""
    if n is None:
        return "-"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {prefix}{unit}"
    return f"{n:g} {unit}".rstrip()


def _mib(n: float | None) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1 (``"673.2 MiB"``); ``None`` -> ``"-"``."""
    if n is None:
        return "-"
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _precision_line(cost: Mapping[str, Any]) -> str:
    """How the prefill ran: ``"bf16-mixed (autocast to bfloat16)"``, ``"32-true"``, or the model's own dtypes."""
    from dynvlm.model.parallel import MIXED, compute_dtype

    precision = cost.get("precision")
    if precision is None:
        return "- (the model's own dtypes)"
    if precision in MIXED:
        device = "cuda" if str(cost.get("device")).startswith("cuda") else "cpu"
        return f"{precision} (autocast to {str(compute_dtype(precision, device)).removeprefix('torch.')})"
    return str(precision)


def cost_table(cost: Mapping[str, Any]) -> str:
    """The per-part FLOPs table and the other measurements of :func:`measure_cost`, as plain text."""

    total = cost["flops_prefill"] or 0
    rows = [(p, human(cost[f"flops_{p}"], "FLOP"), f"{cost[f'flops_{p}']:.0f}",
             f"{100 * cost[f'flops_{p}'] / total:.1f} %" if total else "-") for p in FLOP_PARTS]
    if cost.get("flops_other"):
        rows.append(("other", human(cost["flops_other"], "FLOP"), f"{cost['flops_other']:.0f}",
                     f"{100 * cost['flops_other'] / total:.1f} %"))
    rows.append(("total prefill", human(total, "FLOP"), f"{total:.0f}", "100 %" if total else "-"))
    meta = cost.get("device") == "meta"

    def ms(key: str) -> str:
        return "- (not measurable on the meta device)" if meta else f"{cost[key]:.1f} ms"

    lines = [
        format_table(("part", "FLOPs", "exact", "share"), rows),
        "",
        "lm_head:               " + ("last position only (as generate's first step)" if cost["lm_head_positions"] == "last"
                                     else "every position (the LLM plugin's forward)"),
        "precision:             " + _precision_line(cost),
        f"frames x M:            {cost['frames']} x {cost['tokens_per_frame']}",
        f"visual tokens:         {cost['visual_tokens']}",
        f"prompt tokens:         {cost['prompt_tokens']} (LLM positions of the prefill)",
        f"KV cache:              {_mib(cost['kv_bytes'])} ({cost['kv_bytes']} bytes; {cost['kv_source']})",
        f"prefill latency:       {ms('prefill_ms')}" + ("" if meta else
                                                      f" (visual {cost['visual_ms']:.1f} ms + LLM {cost['llm_prefill_ms']:.1f} ms; median)"),
        "peak memory:           " + ("- (not measurable on the meta device)" if cost["peak_mem_bytes"] is None else
                                     f"{_mib(cost['peak_mem_bytes'])} (+{_mib(cost['peak_mem_delta_bytes'])} during the prefill; "
                                     f"{cost['peak_mem_source']})"),
    ]
    return "\n".join(lines)


def cost_cli(cfg: Mapping[str, Any], *, config_path: str | None = None, meta: bool = False, duration: float = 60.0,
             repeats: int = 5, device: str | None = None, as_json: bool = False,
             encoder_config: str | None = None, llm_config: str | None = None) -> int:
    """``dynvlm cost``: build the config's model (on meta without weights), measure one synthetic video, print.

    Progress goes to stderr; the table (or JSON with ``as_json``) to stdout. Returns the exit code.
    """
    def log(line: str) -> None:
        print(f"dynvlm cost: {line}", file=sys.stderr, flush=True)

    from dynvlm.model.parallel import precision_dtype, precision_of

    if device == "cuda" and not torch.cuda.is_available():
        from dynvlm.config import ConfigError

        raise ConfigError("--device cuda but no CUDA device is available")
    precision_dtype(precision_of(cfg.get("trainer")))  # an unmeasurable trainer.precision fails before the build
    if cfg.get("sweep"):
        log("the file has sweep: measuring its base config; give key=value overrides to pick a point")
    t0 = time.perf_counter()
    model = build_for_cost(cfg, meta=meta, device=device,
                           config_files={"encoder": encoder_config, "llm": llm_config}, log=log)
    sample = synthetic_video(model, duration)
    log(f"measuring a {duration:g} s synthetic video ({sample.frames.shape[0]} frames decoded at "
        f"{model.budget.cfg.fps:g} fps, {model.encoder.image_size}px)")
    # measured the way the config's trainer.precision runs the model (autocast under *-mixed), as dynvlm eval runs it
    cost = measure_cost(model, [sample], repeats=repeats, precision=precision_of(cfg.get("trainer")))
    cost["duration_s"] = duration
    log(f"done in {time.perf_counter() - t0:.1f} s")
    if as_json:
        print(json.dumps(cost, indent=2))
        return 0
    where = "meta device (no weights)" if cost["device"] == "meta" else cost["device"]
    print(f"{config_path or 'config'}: {duration:g} s video, {where}, torch {torch.__version__}\n")
    print(cost_table(cost))
    return 0
