"""Per-GPU memory plan of a training config: ``dynvlm cost CONFIG --train``.

The model is built on the meta device (shapes only: a 7B model in seconds, no memory) and the plan adds:

- **weights, gradients, optimizer states** per part (encoder, compressor, projector, LLM), counted from the
  built parameters and the stage's trainable set, in the bytes the configured precision keeps (``*-mixed``:
  fp32 master weights, fp32 gradients, two fp32 AdamW moments; ``*-true``: the half dtype throughout;
  fp32 otherwise: the dtype each part was built in), divided over the devices as the strategy shards them
  (FSDP ``FULL_SHARD``: all three; ``SHARD_GRAD_OP``: gradients and moments; DDP: none; DeepSpeed ZeRO-1/2/3:
  moments / + gradients / + weights);
- **the strategy's working copies**: FSDP gathers the root unit and, with per-layer units, the layer being
  run plus the one prefetched, in the compute dtype, and one layer's full gradient (compute dtype, then fp32
  for the reduce-scatter); DDP keeps gradient buckets the size of the gradients;
- **one training step's activations and transients**, *simulated*: a real forward and backward of the
  VideoLLM on the meta device, on ``data.batch_size`` synthetic samples at the budget's largest plan
  (``--duration`` seconds of video, or one image for the image stages) with ``--text-tokens`` prompt words
  and ``--answer-tokens`` answer words, in the compute dtype, with the configured activation checkpointing
  and loss (``optim.answer_only_loss``). Every storage an op creates is followed until it is freed
  (:class:`dynvlm.util.live_memory.LiveTensorMemory`); the step's peak is the largest sum alive. Gradients of
  parameters are dropped as they arrive (they are in the static part above). Tensors saved for backward at the
  end of the forward are attributed to the part that made them, the LM head and the loss as their own part;
- **optimizer step temporaries**: one fp32 buffer the size of the (sharded) trainable parameters
  (``foreach`` AdamW's square roots).

The peak per GPU is the static part plus the larger of the step's peak and the optimizer's temporaries. Not
modelled: the CUDA context and NCCL buffers (about 1 GiB), allocator fragmentation, and the fp32 residual
stream of autocast under DDP (simulated in fp32 throughout there: an upper bound).
tests/test_memory_plan.py checks the plan against torch's CPU allocator on tiny models (within 15 %).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dynvlm.model.parallel import MIXED, TRUE_HALF
from dynvlm.records import Sample, Turn
from dynvlm.util.live_memory import LiveTensorMemory
from dynvlm.util.tables import format_table

PARTS = ("encoder", "compressor", "projector", "llm")
LM_HEAD = "lm head + loss"
GiB = 2**30


@dataclass
class Layout:
    """How a training config spreads over devices (read from ``trainer`` and ``data``)."""

    strategy: str = "single"  # single, ddp, fsdp, deepspeed
    devices: int = 1
    sharding: str = "FULL_SHARD"
    wrap: str = "layers"
    zero_stage: int = 2
    precision: str = "32-true"
    checkpointing: bool = False
    batch: int = 1
    answer_only: bool = False

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The dtype the step is simulated in (``None``: as built)."""
        half = MIXED.get(self.precision) or TRUE_HALF.get(self.precision)
        if half is not None and (self.precision in TRUE_HALF or self.strategy == "fsdp"):
            return half
        return torch.float32 if self.precision in MIXED else None


def layout_of(cfg: Mapping[str, Any], devices: int | None = None) -> Layout:
    """The :class:`Layout` of a run config; ``devices`` overrides ``trainer.devices x trainer.num_nodes``."""
    trainer = dict(cfg.get("trainer") or {})
    spec = trainer.get("strategy", "auto")
    if devices is None:
        raw = trainer.get("devices", 1)
        devices = (int(raw) if isinstance(raw, int) or str(raw).isdigit() else 1) * int(trainer.get("num_nodes") or 1)
    lay = Layout(devices=max(1, devices), precision=str(trainer.get("precision") or "32-true"),
                 batch=int((cfg.get("data") or {}).get("batch_size", 8)),
                 answer_only=bool((cfg.get("optim") or {}).get("answer_only_loss", False)))
    if isinstance(spec, Mapping):
        name = str(spec.get("name", "ddp"))
        lay.sharding = str(spec.get("sharding", "FULL_SHARD"))
        lay.wrap = str(spec.get("wrap", "layers"))
        lay.zero_stage = int(spec.get("zero_stage", 2))
        lay.checkpointing = bool(spec.get("activation_checkpointing", False))
    else:
        name = str(spec)
        lay.wrap = "none"  # a bare 'fsdp' has no wrap policy: the whole model is one unit
    name = "fsdp" if name.startswith("fsdp") else "deepspeed" if name.startswith("deepspeed") else name
    lay.strategy = name if name in ("fsdp", "deepspeed") else ("ddp" if lay.devices > 1 else "single")
    return lay


# -- the static part -------------------------------------------------------------------------------


def _bytes_per_param(p: nn.Parameter, lay: Layout) -> int:
    if lay.precision in MIXED:
        return 4
    if lay.precision in TRUE_HALF:
        return 2
    return p.element_size()


def static_rows(model: nn.Module, lay: Layout) -> list[dict[str, Any]]:
    """Per part: parameters, trainable ones, and bytes per GPU of weights, gradients and AdamW moments."""
    n = lay.devices
    shard_w = n if (lay.strategy == "fsdp" and lay.sharding in ("FULL_SHARD", "HYBRID_SHARD")) or \
        (lay.strategy == "deepspeed" and lay.zero_stage == 3) else 1
    shard_g = n if (lay.strategy == "fsdp" and lay.sharding != "NO_SHARD") or \
        (lay.strategy == "deepspeed" and lay.zero_stage >= 2) else 1
    shard_o = n if (lay.strategy == "fsdp" and lay.sharding != "NO_SHARD") or lay.strategy == "deepspeed" else 1
    rows = []
    for part in PARTS:
        params = list(getattr(model, part).parameters())
        total = sum(p.numel() for p in params)
        trainable = [p for p in params if p.requires_grad]
        w = sum(p.numel() * _bytes_per_param(p, lay) for p in params) / shard_w
        g = sum(p.numel() * _bytes_per_param(p, lay) for p in trainable) / shard_g
        o = 2 * sum(p.numel() * _bytes_per_param(p, lay) for p in trainable) / shard_o
        rows.append({"part": part, "params": total, "trainable": sum(p.numel() for p in trainable),
                     "weights": w, "grads": g, "optimizer": o})
    return rows


def working_bytes(model: nn.Module, lay: Layout) -> tuple[float, str]:
    """Bytes the strategy holds beyond the shards, and what they are."""
    from dynvlm.model.parallel import layer_parameter_counts

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    dtype = lay.compute_dtype or torch.float32
    c = torch.tensor([], dtype=dtype).element_size()
    if lay.strategy == "fsdp" and lay.sharding != "NO_SHARD":
        root, layers = layer_parameter_counts(model) if lay.wrap == "layers" else (sum(p.numel() for p in model.parameters()), [])
        biggest = max(layers, default=0)
        if lay.sharding == "SHARD_GRAD_OP" or lay.wrap != "layers":
            total = sum(p.numel() for p in model.parameters())
            unit = biggest if lay.wrap == "layers" else total
            return total * c + unit * (c + 4), "FSDP: every weight gathered in the compute dtype, one unit's full gradient"
        return (root * c + 2 * biggest * c + biggest * (c + 4),
                f"FSDP: root unit ({root / 1e6:.0f} M params) + 2 layers ({biggest / 1e6:.0f} M each, running and "
                "prefetched) in the compute dtype, one layer's full gradient (compute dtype + fp32 to reduce)")
    if lay.strategy == "ddp":
        return trainable * 4 if lay.precision in MIXED else sum(p.numel() * p.element_size() for p in model.parameters()
                                                                if p.requires_grad), "DDP gradient buckets"
    if lay.strategy == "deepspeed":
        return sum(p.numel() for p in model.parameters()) * c, "DeepSpeed: weights in the compute dtype"
    return 0.0, ""


# -- the simulated step ---------------------------------------------------------------------------


def plan_samples(model: Any, cfg: Mapping[str, Any], kind: str, duration: float, text_tokens: int,
                 answer_tokens: int, batch: int) -> list[Sample]:
    """``batch`` equal synthetic samples: a ``duration`` s video (or one image) with ``text_tokens`` prompt
    words and ``answer_tokens`` answer words (a word the tokenizer knows, one token each where it can)."""
    from dynvlm.measure.cost import synthetic_video

    tok = model.llm.tokenizer
    unk = getattr(tok, "unk_token_id", None)
    word = next((w for w in ("the", "a", "what", "video") if tok.convert_tokens_to_ids(w) not in (None, unk)), "the")
    marker = "<video>" if kind == "video" else "<image>"
    base = synthetic_video(model, duration if kind == "video" else 1.0)
    frames, stamps = (base.frames, base.timestamps) if kind == "video" else (base.frames[:1], [0.0])
    conv = [Turn("human", f"{marker}\n" + " ".join([word] * text_tokens)), Turn("gpt", " ".join([word] * answer_tokens))]
    return [Sample(frames, list(stamps), conv, kind=kind, id=f"plan{i}", meta={"duration": float(duration)})
            for i in range(batch)]


@contextlib.contextmanager
def _meta_friendly_llm(llm: nn.Module) -> Iterator[None]:
    """The LLM called without an attention mask (its causal mask is built from the mask's values, which meta
    tensors lack); the plan's samples are equal in length, so the mask would be all ones. transformers then
    looks for packed sequences in the position ids' values: there are none (each row is one sample)."""
    masking = importlib.import_module("transformers.masking_utils") if importlib.util.find_spec("transformers") else None
    packed = getattr(masking, "find_packed_sequence_indices", None)
    if packed is not None:
        masking.find_packed_sequence_indices = lambda position_ids: None
    saved = {k: llm.__dict__.get(k) for k in ("forward", "answer_loss")}
    forward, answer = llm.forward, getattr(llm, "answer_loss", None)
    llm.forward = lambda embeds, mask, labels=None: forward(embeds, None, labels)
    if answer is not None:
        llm.answer_loss = lambda embeds, mask, labels: answer(embeds, None, labels)
    try:
        yield
    finally:
        if packed is not None:
            masking.find_packed_sequence_indices = packed
        for k, v in saved.items():
            if v is None:
                llm.__dict__.pop(k, None)
            else:
                llm.__dict__[k] = v


class _FlashAttentionMemory(torch.autograd.Function):
    """What fused (flash) attention allocates, without computing it: the output and the fp32 log-sum-exp in
    forward (q, k, v, output and log-sum-exp saved), the input gradients plus an fp32 accumulator of ``dq``
    in backward; grouped-query keys and values are not repeated. On the meta device torch would otherwise
    pick its math attention, which holds the full ``L x L`` probabilities no GPU kernel keeps."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = q.new_empty(q.shape[:-1] + v.shape[-1:])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v, out, lse = ctx.saved_tensors
        accum = q.new_empty(q.shape, dtype=torch.float32)  # noqa: F841 - flash backward's dq accumulator
        delta = q.new_empty(q.shape[:-1], dtype=torch.float32)  # noqa: F841 - rowwise (dO * O) sums
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def _flash_attention() -> Iterator[None]:
    """``scaled_dot_product_attention`` without a mask runs as :class:`_FlashAttentionMemory` (meta only)."""
    original = torch.nn.functional.scaled_dot_product_attention

    def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any = None, *args: Any,
             **kwargs: Any) -> torch.Tensor:
        if attn_mask is not None or query.device.type != "meta":
            return original(query, key, value, attn_mask, *args, **kwargs)
        return _FlashAttentionMemory.apply(query, key, value)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def grads_in_step(lay: Layout) -> bool:
    """Whether parameter gradients are counted inside the simulated step (kept whole on each device) rather
    than in the static part (sharded)."""
    return lay.strategy in ("single", "ddp")


def simulate_step(model: Any, samples: list[Sample], lay: Layout) -> dict[str, Any]:
    """Forward and backward of ``model`` (on any device; meta for the plan) on ``samples``, followed storage by
    storage: ``{"peak", "peak_by_part", "saved_by_part", "prompt_tokens", "visual_tokens"}`` (bytes)."""
    from dynvlm.model.parallel import enable_activation_checkpointing

    if lay.compute_dtype is not None:
        model.to(lay.compute_dtype)
    if lay.checkpointing:
        enable_activation_checkpointing(model)
    model.optim_cfg.answer_only_loss = lay.answer_only
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # sharded gradients leave as they arrive (FSDP reduce-scatters each unit's): they are in the static part;
    # unsharded ones (one device, DDP) stay, so the step's peak holds those made by then
    hooks = [] if grads_in_step(lay) else \
        [p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None)) for p in params]
    tracker = LiveTensorMemory(device=next(model.parameters()).device.type)
    parts = {part: getattr(model, part) for part in PARTS}
    hf = getattr(model.llm, "model", None)
    head = getattr(hf, "get_output_embeddings", lambda: None)()
    if head is not None:
        parts[LM_HEAD] = head
    decoder = getattr(hf, "get_decoder", lambda: None)()
    if decoder is not None:  # the answer-only loss calls the decoder, not the LLM plugin's forward
        hooks.append(decoder.register_forward_pre_hook(lambda m, a: setattr(tracker, "tag", "llm")))
    for name, module in parts.items():
        hooks.append(module.register_forward_pre_hook(lambda m, a, name=name: setattr(tracker, "tag", name)))
    param_storages = {id(p.untyped_storage()) for p in model.parameters()}
    saved: dict[str, int] = {}
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = id(t.untyped_storage())
        if key not in param_storages and key not in seen:
            seen.add(key)
            saved[tracker.tag] = saved.get(tracker.tag, 0) + int(t.untyped_storage().nbytes())
        return t

    try:
        with _meta_friendly_llm(model.llm), _flash_attention(), tracker:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = model(samples, training=False)  # the evaluation plan: the budget's largest
            tracker.tag = "backward"
            out["loss"].backward()
    finally:
        for h in hooks:
            h.remove()
    return {"peak": tracker.peak, "peak_by_part": dict(tracker.peak_by_tag), "saved_by_part": saved,
            "visual_tokens": float(out["actual_tokens"])}


# -- the plan -------------------------------------------------------------------------------------


def memory_plan(model: Any, cfg: Mapping[str, Any], lay: Layout, kind: str = "video", duration: float = 60.0,
                text_tokens: int = 256, answer_tokens: int = 64) -> dict[str, Any]:
    """The per-GPU plan (bytes) of training ``cfg`` with ``model`` (built for ``cfg``, on meta for real sizes)."""
    static = static_rows(model, lay)
    working, working_what = working_bytes(model, lay)
    trainable = sum(r["trainable"] for r in static)
    shard_o = lay.devices if lay.strategy in ("fsdp", "deepspeed") and lay.sharding != "NO_SHARD" else 1
    optimizer_tmp = trainable * 4 / shard_o
    samples = plan_samples(model, cfg, kind, duration, text_tokens, answer_tokens, lay.batch)
    prompt = model.prompts.collate(model.encode_prompts(samples, model.plan(samples)), "right")
    step = simulate_step(model, samples, lay)
    grads = sum(r["grads"] for r in static)
    fixed = sum(r["weights"] + r["optimizer"] for r in static) + working
    if grads_in_step(lay):  # the step's peak holds the gradients made by then; the optimizer step all of them
        total = fixed + max(step["peak"], grads + optimizer_tmp)
    else:
        total = fixed + grads + max(step["peak"], optimizer_tmp)
    return {"layout": lay.__dict__, "static": static, "working": working, "working_what": working_what,
            "step_peak": step["peak"], "step_peak_by_part": step["peak_by_part"],
            "saved_by_part": step["saved_by_part"], "optimizer_temporaries": optimizer_tmp,
            "grads_in_step": grads_in_step(lay),
            "prompt_tokens": int(prompt.input_ids.shape[1]), "visual_tokens": step["visual_tokens"],
            "answer_positions": int((prompt.labels[:, 1:] != -100).sum()) // max(1, lay.batch),
            "samples_per_gpu": lay.batch, "total": total}


def _g(n: float) -> str:
    return f"{n / GiB:.2f}"


def plan_table(plan: Mapping[str, Any]) -> str:
    """The plan as plain text: a per-part table of the static bytes, then the step and the total (GiB)."""
    lay = plan["layout"]
    rows = [(r["part"], f"{r['params'] / 1e6:.1f} M", f"{r['trainable'] / 1e6:.1f} M", _g(r["weights"]),
             _g(r["grads"]), _g(r["optimizer"])) for r in plan["static"]]
    sums = [sum(r[k] for r in plan["static"]) for k in ("weights", "grads", "optimizer")]
    rows.append(("total", f"{sum(r['params'] for r in plan['static']) / 1e6:.1f} M",
                 f"{sum(r['trainable'] for r in plan['static']) / 1e6:.1f} M", *map(_g, sums)))
    acts = [(part, _g(plan["saved_by_part"].get(part, 0)), _g(plan["step_peak_by_part"].get(part, 0)))
            for part in (*PARTS, LM_HEAD, "backward")
            if plan["saved_by_part"].get(part) or plan["step_peak_by_part"].get(part)]
    lines = [
        f"strategy {lay['strategy']} ({lay['sharding'] if lay['strategy'] == 'fsdp' else ''}"
        f"{', wrap ' + lay['wrap'] if lay['strategy'] == 'fsdp' else ''}) on {lay['devices']} device(s), precision "
        f"{lay['precision']}, activation checkpointing {'on' if lay['checkpointing'] else 'off'}, "
        f"loss on {'answer positions only' if lay['answer_only'] else 'every position'}",
        f"per GPU: {plan['samples_per_gpu']} sample(s) of {plan['prompt_tokens']} tokens "
        f"({plan['visual_tokens']:.0f} visual, {plan['answer_positions']} answer positions)",
        "",
        format_table(("part", "params", "trainable", "weights GiB", "grads GiB", "AdamW GiB"), rows),
        "",
        format_table(("made by", "saved for backward GiB", "alive at the step's peak GiB"), acts) if acts else "",
        "",
        f"{'strategy working set:':32s}{_g(plan['working'])} GiB ({plan['working_what'] or 'none'})",
        f"{'step peak (simulated on meta):':32s}{_g(plan['step_peak'])} GiB (activations, their gradients, logits"
        + (", the weight gradients made by then)" if plan["grads_in_step"] else ")"),
        f"{'optimizer step temporaries:':32s}{_g(plan['optimizer_temporaries'])} GiB",
        f"{'planned peak per GPU:':32s}{_g(plan['total'])} GiB",
    ]
    return "\n".join(lines)


def plan_cli(cfg: Mapping[str, Any], *, config_path: str | None = None, devices: int | None = None,
             duration: float = 60.0, text_tokens: int = 256, answer_tokens: int = 64, kind: str | None = None,
             as_json: bool = False, encoder_config: str | None = None, llm_config: str | None = None) -> int:
    """``dynvlm cost CONFIG --train``: build on meta, plan, print. Returns the exit code."""
    from dynvlm.measure.cost import build_for_cost

    def log(line: str) -> None:
        print(f"dynvlm cost --train: {line}", file=sys.stderr, flush=True)

    lay = layout_of(cfg, devices)
    stage = str((cfg.get("stage") or {}).get("name", "video_sft"))
    kind = kind or ("image" if stage in ("pretrain", "image_sft") else "video")
    model = build_for_cost(cfg, meta=True, config_files={"encoder": encoder_config, "llm": llm_config}, log=log)
    plan = memory_plan(model, cfg, lay, kind=kind, duration=duration, text_tokens=text_tokens,
                       answer_tokens=answer_tokens)
    if as_json:
        print(json.dumps(plan, indent=2, default=str))
        return 0
    what = f"{duration:g} s video" if kind == "video" else "one image"
    print(f"{config_path or 'config'}: training memory plan per GPU ({what} per sample, stage {stage}), torch "
          f"{torch.__version__}\n")
    print(plan_table(plan))
    return 0
