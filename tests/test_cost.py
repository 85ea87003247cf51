"""Measured cost (dynvlm.measure.cost): FLOP counts against hand counts, KV bytes against the real cache,
building without weights, and ``dynvlm cost`` on the 7B recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_vlm import ENCODER, LLM, WORDS, colour_samples, run_config
from torch import Tensor, nn

from dynvlm.cli.main import main
from dynvlm.config import ConfigError
from dynvlm.interfaces import VisionEncoder
from dynvlm.measure.cost import (
    KNOWN_CONFIGS,
    build_for_cost,
    count_flops,
    llm_prefill,
    measure_cost,
    resolve_for_cost,
    synthetic_video,
)
from dynvlm.model.video_llm import VideoLLM

ROOT = Path(__file__).resolve().parents[1]
RECIPE_7B = ROOT / "experiments" / "dynamic_vlm_7b" / "video_sft.yaml"


class LinearEncoder(VisionEncoder):
    """One linear layer on non-overlapping patches: ``[F, 3, S, S]`` -> ``[F, (S/p)^2, C]``."""

    def __init__(self, image_size: int, patch: int, width: int) -> None:
        super().__init__()
        self.image_size, self.patch, self.width = image_size, patch, width
        self.grid = (image_size // patch, image_size // patch)
        self.proj = nn.Linear(3 * patch * patch, width)

    def preprocess(self, frames: Tensor) -> Tensor:
        return frames.permute(0, 3, 1, 2).float() / 255.0

    def forward(self, frames: Tensor) -> Tensor:
        f, p, (h, w) = frames.shape[0], self.patch, self.grid
        patches = frames.reshape(f, 3, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(f, h * w, 3 * p * p)
        return self.proj(patches)


def qwen2_prefill_flops(cfg: dict, positions: int, lm_head_positions: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of a Qwen2 prefill over ``positions`` tokens, by hand.

    Per layer: q/k/v/o projections, the attention's two products over the full L x L square
    (FlopCounterMode does not discount the causal half), and the gated MLP (gate, up, down);
    then the lm_head for ``lm_head_positions`` positions.
    """
    d, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // heads
    n = positions
    proj = 2 * n * d * (heads * hd) + 2 * (2 * n * d * (kv * hd)) + 2 * n * (heads * hd) * d
    attn = 2 * (2 * heads * n * n * hd)
    mlp = 3 * (2 * n * d * inter)
    return layers * (proj + attn + mlp) + 2 * lm_head_positions * d * cfg["vocab_size"]


def clip_encoder_flops(cfg: dict, frames: int, layers: int) -> int:
    """Matmul/conv FLOPs of ``layers`` CLIP vision layers on ``frames`` frames, by hand."""
    d, inter, heads, p, s = (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"],
                             cfg["patch_size"], cfg["image_size"])
    patches = (s // p) ** 2
    n = patches + 1  # + CLS
    embed = 2 * patches * (3 * p * p) * d  # the patch convolution
    layer = n * 2 * (4 * d * d + 2 * d * inter) + 2 * (2 * heads * n * n * (d // heads))
    return frames * (embed + layers * layer)


def cache_bytes(out) -> int:
    """Bytes of the K and V tensors a Hugging Face prefill actually cached."""
    cache = getattr(out, "cache", None) or out.past_key_values
    if hasattr(cache, "layers"):
        pairs = [(layer.keys, layer.values) for layer in cache.layers]
    else:  # older transformers
        pairs = list(zip(cache.key_cache, cache.value_cache))
    return sum(t.numel() * t.element_size() for pair in pairs for t in pair)


def test_count_flops_of_a_linear_layer():
    lin = nn.Linear(24, 40)
    assert count_flops(lin, torch.randn(7, 24)) == 2 * 7 * 24 * 40


def test_linear_encoder_and_projector_flops_match_hand_counts(tmp_path):
    model = VideoLLM(run_config(tmp_path))
    c, p, s = ENCODER["hidden_size"], ENCODER["patch_size"], ENCODER["image_size"]
    model.encoder = LinearEncoder(s, p, c)  # same grid and width: the budget and projector still fit
    cost = measure_cost(model, [synthetic_video(model, 4)], repeats=1)  # frames at the encoder's size
    frames, m = cost["frames"], cost["tokens_per_frame"]
    assert frames == 4 and m == 16  # N_max 64 over 4 frames of a 4 x 4 grid
    n = (s // p) ** 2
    assert cost["flops_encoder"] == 2 * frames * n * (3 * p * p) * c
    d = LLM["hidden_size"]  # projector: Linear(C, D) -> GELU -> Linear(D, D)
    assert cost["flops_projector"] == 2 * frames * m * (c * d + d * d)
    assert cost["flops_compressor"] == 0  # pooling: FlopCounterMode counts no matmul
    assert cost["visual_tokens"] == frames * m
    assert cost["flops_prefill"] == sum(cost[f"flops_{k}"] for k in ("encoder", "compressor", "projector", "llm_prefill"))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_one_layer_qwen2_prefill_flops_match_the_formula(tmp_path, attn):
    cfg = run_config(tmp_path)
    cfg["model"]["llm"]["attn_implementation"] = attn
    model = VideoLLM(cfg)
    sample = colour_samples(tmp_path / "videos", 1)[0]
    cost = measure_cost(model, [sample], repeats=2)
    qwen = model.llm.model.config
    assert qwen.num_hidden_layers == 1
    hand = dict(LLM, vocab_size=qwen.vocab_size)
    # prefill as generate runs it: the lm_head on the last position only
    assert cost["lm_head_positions"] == "last"
    assert cost["flops_llm_prefill"] == qwen2_prefill_flops(hand, cost["prompt_tokens"], 1)
    assert cost["prompt_tokens"] > cost["visual_tokens"] > 0
    # KV bytes: computed from the config, equal to what the real cache holds
    hd = LLM["hidden_size"] // LLM["num_attention_heads"]
    assert cost["kv_bytes"] == 1 * 2 * LLM["num_key_value_heads"] * hd * cost["prompt_tokens"] * 4
    embeds = model.llm.embed(torch.zeros(1, cost["prompt_tokens"], dtype=torch.long))
    out, _ = llm_prefill(model.llm, embeds)
    assert cache_bytes(out) == cost["kv_bytes"]
    assert cost["prefill_ms"] > 0 and cost["visual_ms"] > 0 and cost["llm_prefill_ms"] > 0
    assert cost["prefill_ms"] >= cost["visual_ms"]
    assert cost["peak_mem_bytes"] > 0 and cost["peak_mem_delta_bytes"] >= 0 and cost["peak_mem_source"]


def test_meta_device_counts_the_same_flops_as_cpu(tmp_path):
    cfg = run_config(tmp_path)
    sample = colour_samples(tmp_path / "videos", 1)[0]
    cpu = measure_cost(VideoLLM(cfg), [sample], repeats=1)
    with torch.device("meta"):
        meta_model = VideoLLM(cfg)
    meta = measure_cost(meta_model, [sample])
    for key in ("flops_encoder", "flops_projector", "flops_llm_prefill", "prompt_tokens", "kv_bytes"):
        assert meta[key] == cpu[key], key
    assert cpu["flops_encoder"] > 0
    assert meta["device"] == "meta" and meta["prefill_ms"] is None and meta["peak_mem_bytes"] is None


def test_synthetic_video_follows_the_budget(tmp_path):
    cfg = run_config(tmp_path)  # fps 1, max_frames 16, N_max 64
    model = VideoLLM(cfg)
    clip = synthetic_video(model, 60)
    assert clip.frames.shape == (16, ENCODER["image_size"], ENCODER["image_size"], 3)
    assert clip.timestamps[0] == 0.0 and clip.timestamps[-1] == 59.0
    assert model.plan([clip])[0].visual_tokens <= 64
    assert synthetic_video(model, 3.5).frames.shape[0] == 3
    with pytest.raises(ValueError, match="duration"):
        synthetic_video(model, 0)


def _path_config(tmp_path: Path, encoder_path: Path, llm_path: Path) -> dict:
    cfg = run_config(tmp_path)
    cfg["model"]["encoder"] = {"name": "clip", "path": str(encoder_path)}
    cfg["model"]["llm"] = {"name": "hf", "path": str(llm_path)}
    return cfg


def test_folders_with_only_config_json_build_on_meta(tmp_path):
    from transformers import CLIPVisionConfig, Qwen2Config

    enc, llm = tmp_path / "enc", tmp_path / "llm"
    CLIPVisionConfig(**ENCODER).save_pretrained(enc)
    # room for the word-level stand-in tokenizer (the synthetic task's words), which the meta build uses
    Qwen2Config(**LLM, vocab_size=len(WORDS) + 300).save_pretrained(llm)
    assert sorted(p.name for p in llm.iterdir()) == ["config.json"]
    data, meta, notes, _ = resolve_for_cost(_path_config(tmp_path, enc, llm))
    assert meta and "path" not in data["model"]["llm"] and data["model"]["llm"]["config"]["hidden_size"] == LLM["hidden_size"]
    assert any("config.json" in n for n in notes)
    model = build_for_cost(_path_config(tmp_path, enc, llm))
    assert model.device.type == "meta"
    cost = measure_cost(model, [synthetic_video(model, 8)])
    assert cost["flops_llm_prefill"] == qwen2_prefill_flops(dict(LLM, vocab_size=len(WORDS) + 300), cost["prompt_tokens"], 1)
    assert cost["flops_encoder"] == clip_encoder_flops(ENCODER, cost["frames"], ENCODER["num_hidden_layers"] - 1)


def test_unresolvable_paths_and_other_architectures_are_clear_errors(tmp_path):
    from transformers import CLIPVisionConfig, LlamaConfig

    enc = tmp_path / "enc"
    CLIPVisionConfig(**ENCODER).save_pretrained(enc)
    with pytest.raises(ConfigError, match=r"model\.llm\.path: .*no weights and no config\.json.*--llm-config"):
        resolve_for_cost(_path_config(tmp_path, enc, tmp_path / "my-own-llm"))
    llama = tmp_path / "llama"
    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, vocab_size=200).save_pretrained(llama)
    with pytest.raises(ConfigError, match="'llama' model"):
        build_for_cost(_path_config(tmp_path, enc, llama))


def test_checkpoints_present_are_loaded_and_timed(tmp_path):
    from tiny_vlm import save_clip, save_qwen

    cfg = _path_config(tmp_path, Path(save_clip(tmp_path / "enc")), Path(save_qwen(tmp_path / "llm")))
    data, meta, notes, _ = resolve_for_cost(cfg)
    assert not meta and data["model"]["llm"]["path"] == str(tmp_path / "llm")
    assert resolve_for_cost(cfg, meta=True)[1]  # --meta: from the folders' config.json
    model = build_for_cost(cfg, device="cpu")
    assert model.device.type == "cpu"
    cost = measure_cost(model, [synthetic_video(model, 4)], repeats=2)
    assert cost["prefill_ms"] > 0 and cost["flops_llm_prefill"] > 0


def test_known_configs_match_the_7b_recipe_names():
    assert {"clip-vit-large-patch14-336", "Qwen2.5-7B-Instruct"} <= set(KNOWN_CONFIGS)
    assert "/clip-vit-large-patch14-336" in RECIPE_7B.parent.joinpath("common.yaml").read_text()


def test_cost_json_of_the_7b_recipe_matches_hand_counts(capsys):
    assert main(["cost", str(RECIPE_7B), "--json"]) == 0
    cost = json.loads(capsys.readouterr().out)
    qwen, clip = KNOWN_CONFIGS["Qwen2.5-7B-Instruct"], KNOWN_CONFIGS["clip-vit-large-patch14-336"]
    assert cost["device"] == "meta" and cost["frames"] == 60
    assert cost["visual_tokens"] == 60 * cost["tokens_per_frame"] <= 12000
    assert cost["flops_llm_prefill"] == qwen2_prefill_flops(qwen, cost["prompt_tokens"], 1)
    assert cost["flops_encoder"] == clip_encoder_flops(clip, 60, 23)  # select_layer -2: 23 of 24 layers
    d = qwen["hidden_size"]
    assert cost["flops_projector"] == 2 * cost["visual_tokens"] * (clip["hidden_size"] * d + d * d)
    assert cost["kv_bytes"] == 28 * 2 * 4 * 128 * cost["prompt_tokens"] * 2  # bf16
    assert cost["prefill_ms"] is None


def test_dynvlm_cost_on_the_7b_recipe_runs_under_a_minute():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dynvlm", "cost", str(RECIPE_7B)], capture_output=True, text=True,
                          env=env, timeout=120)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 60, f"took {elapsed:.1f} s"
    out = proc.stdout
    for part in ("encoder", "compressor", "projector", "llm_prefill", "total prefill"):
        assert f"\n{part} " in out, part
    assert "TFLOP" in out and "KV cache:" in out and "MiB" in out
    assert "prefill latency:       - (not measurable on the meta device)" in out
    assert "built-in config of 'Qwen2.5-7B-Instruct'" in proc.stderr


def test_kernel_backends_count_as_their_pytorch_reference(tmp_path):
    counts = {}
    for backend in ("torch", "triton"):  # Triton runs in its interpreter on CPU (conftest)
        cfg = run_config(tmp_path, budget={"max_tokens": 64, "max_frames": 16, "tokens_per_frame": 4})
        cfg["model"]["compressor"] = {"name": "tome", "backend": backend}
        model = VideoLLM(cfg)
        counts[backend] = measure_cost(model, [synthetic_video(model, 6)], latency=False, memory=False)
        assert model.compressor.backend == backend  # restored after the count
    assert counts["torch"]["flops_compressor"] > 0  # ToMe's similarity products
    assert counts["triton"]["flops_compressor"] == counts["torch"]["flops_compressor"]


def _bf16_config(tmp_path: Path, precision: str | None) -> dict:
    """The tiny model with its encoder and LLM loaded in bf16, as the 7B recipe loads them (projector fp32)."""
    cfg = run_config(tmp_path)
    cfg["model"]["encoder"]["dtype"] = cfg["model"]["llm"]["dtype"] = "bfloat16"
    if precision is not None:
        cfg["trainer"]["precision"] = precision
    return cfg


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true", "bf16-true"])
def test_dynvlm_cost_of_a_bf16_model_runs_under_its_trainer_precision(tmp_path, capsys, precision):
    """dynvlm cost (not --meta) of a bf16 encoder + LLM with the fp32 projector crashed under every precision
    ('mat1 and mat2 must have the same dtype'); it now runs as the config's trainer.precision runs the model."""
    import yaml

    path = tmp_path / "bf16.yaml"
    path.write_text(yaml.safe_dump(_bf16_config(tmp_path, precision)))
    assert main(["cost", str(path), "--json", "--duration", "4", "--repeats", "1"]) == 0
    cost = json.loads(capsys.readouterr().out)
    assert cost["device"] == "cpu" and cost["precision"] == precision
    # FLOPs do not depend on the dtype: the same counts as the all-fp32 model's
    fp32 = measure_cost(VideoLLM(run_config(tmp_path)), [synthetic_video(VideoLLM(run_config(tmp_path)), 4)], repeats=1)
    for key in ("flops_encoder", "flops_projector", "flops_llm_prefill", "prompt_tokens"):
        assert cost[key] == fp32[key] > 0, key
    assert cost["prefill_ms"] > 0 and cost["peak_mem_bytes"] > 0
    assert cost["kv_bytes"] == fp32["kv_bytes"] // 2  # the bf16 LLM's cache


def test_mixed_precision_is_measured_under_autocast(tmp_path):
    """Under *-mixed the fp32 master weights (dynvlm test, a sweep's fitted model) run in autocast, as in the
    Trainer's loops: the projector computes in bf16 (it ran in fp32 before)."""
    model = VideoLLM(run_config(tmp_path))  # every parameter fp32
    sample = synthetic_video(model, 4)
    seen: list[torch.dtype] = []
    hook = model.projector.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    plain = measure_cost(model, [sample], repeats=1, memory=False)
    assert set(seen) == {torch.float32} and plain["precision"] is None
    seen.clear()
    mixed = measure_cost(model, [sample], repeats=1, memory=False, precision="bf16-mixed")
    hook.remove()
    assert set(seen) == {torch.bfloat16} and mixed["precision"] == "bf16-mixed"
    assert mixed["flops_prefill"] == plain["flops_prefill"] > 0
    assert mixed["prefill_ms"] > 0 and not torch.is_autocast_enabled("cpu")  # the context ended with the measurement


def test_precisions_that_cannot_be_measured_are_named(tmp_path):
    model = VideoLLM(_bf16_config(tmp_path, None))
    sample = synthetic_video(model, 4)
    # bf16-true runs the whole model in bf16 (Lightning casts it): a model holding fp32 weights would be measured
    # in another precision than the config's
    with pytest.raises(ConfigError, match=r"trainer\.precision 'bf16-true' runs the whole model in bfloat16, but its "
                                          r"parameters are bfloat16, float32: cast it first"):
        measure_cost(model, [sample], precision="bf16-true")
    with pytest.raises(ConfigError, match=r"trainer\.precision: 'transformer-engine' cannot be reproduced .* "
                                          r"valid: bf16-mixed, 16-mixed, .*32-true"):
        measure_cost(model, [sample], precision="transformer-engine")
    # dynvlm cost builds a *-true config as Lightning's loops run it: every parameter in that dtype
    built = build_for_cost(_bf16_config(tmp_path, "bf16-true"), device="cpu")
    assert {p.dtype for p in built.parameters()} == {torch.bfloat16}
