"""Importing a LLaVA-OneVision checkpoint (``LlavaOnevisionForConditionalGeneration``) into dynvlm's parts.

``dynvlm import llava-onevision PATH --out DIR`` (:func:`import_llava_onevision`) loads the checkpoint
through ``transformers``' ``from_pretrained`` (``local_files_only``, never ``trust_remote_code``), so
both the original ``language_model.model.*`` and the current ``model.language_model.*`` key layouts
load, and writes:

- ``DIR/encoder/``: the SigLIP tower (``SiglipVisionModel`` + ``preprocessor_config.json``) for the ``siglip`` encoder;
- ``DIR/llm/``: the language model (``AutoModelForCausalLM``, e.g. ``Qwen2ForCausalLM``) and its tokenizer for ``hf``;
- ``DIR/projector.safetensors``: the 2-layer GELU projector and ``image_newline`` as dynvlm's
  ``projector.net.*`` and ``projector.separator`` (loaded by ``stage.resume_from``);
- ``DIR/model.yaml``: a ready config that reproduces the model's video forward: ``bilinear`` at the
  checkpoint's pooled tokens per frame after the projector, the separator, the ``llava_ov`` prompt,
  ``select_layer`` from ``vision_feature_layer``;
- ``DIR/imported.ckpt``: the same projector weights as a dynvlm checkpoint whose config is ``model.yaml``
  (``dynvlm eval SWEEP.yaml --checkpoint DIR/imported.ckpt``: training-free grids, ``experiments/llava_ov``);
- ``DIR/manifest.json``: the source (path, files and their sha256), every source key -> ``part:key``,
  the written files' sha256 and what is not used.

Every key of the checkpoint's state dict goes through :func:`plan_import`: a key no rule maps, or a
mapped key the target part does not have (or with another shape), is an error naming it. The same
plan runs on a model built on the meta device, so published configs can be checked without weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dynvlm.config import ConfigError
from dynvlm.model.projector import Projector
from dynvlm.util.paths import sha256

#: the source kind ``dynvlm import`` names
KIND = "llava-onevision"

#: source key prefix -> (part, target prefix); the longest matching prefix wins
RULES: dict[str, tuple[str, str]] = {
    "model.vision_tower.": ("encoder", ""),
    "model.multi_modal_projector.linear_1.": ("projector", "net.0."),
    "model.multi_modal_projector.linear_2.": ("projector", "net.2."),
    "model.image_newline": ("projector", "separator"),
    "model.language_model.": ("llm", "model."),
    "lm_head.": ("llm", "lm_head."),
}

#: target keys that are written but never influence dynvlm's (or LLaVA-OneVision's) output
UNUSED = {"encoder": ("post_layernorm.",)}
UNUSED_WHY = ("LLaVA-OneVision reads hidden_states[vision_feature_layer], the last layer's output before "
              "post_layernorm; dynvlm's encoder drops it on load the same way")

#: a ChatML chat template for a tokenizer that ships without one (the ``hf`` LLM needs one; the
#: ``llava_ov`` prompt format renders the conversation itself)
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


class UnsupportedCheckpoint(ConfigError):
    """A checkpoint dynvlm cannot import: an unmapped key, or an architecture option its walk lacks."""


@dataclass
class ImportPlan:
    """Where every source tensor goes: ``mapping[source key] = (part, target key)``, per part the
    target modules' ``shapes``, and the options the ready config needs."""

    mapping: dict[str, tuple[str, str]]
    select_layer: int
    tokens_per_frame: int
    grid: tuple[int, int]
    unused: list[str] = field(default_factory=list)


def map_key(key: str) -> tuple[str, str] | None:
    """``(part, target key)`` of one source key, or ``None`` when no rule maps it."""
    hits = [p for p in RULES if key == p or (p.endswith(".") and key.startswith(p))]
    if not hits:
        return None
    prefix = max(hits, key=len)
    part, target = RULES[prefix]
    return part, target + key[len(prefix):]


def check_architecture(config: Any) -> None:
    """Raise :class:`UnsupportedCheckpoint` for a LLaVA-OneVision option dynvlm's walk does not reproduce."""
    vc = config.vision_config
    problems = []
    if getattr(config, "model_type", None) != "llava_onevision":
        problems.append(f"model_type is {getattr(config, 'model_type', None)!r}, not 'llava_onevision'")
    if getattr(vc, "model_type", None) != "siglip_vision_model":
        problems.append(f"vision tower {getattr(vc, 'model_type', None)!r}: dynvlm's 'siglip' encoder takes siglip_vision_model")
    if not isinstance(config.vision_feature_layer, int):
        problems.append(f"vision_feature_layer {config.vision_feature_layer!r}: several layers concatenated are not supported")
    if config.vision_feature_select_strategy != "full":
        problems.append(f"vision_feature_select_strategy {config.vision_feature_select_strategy!r}: SigLIP has no CLS "
                        "token, 'default' would drop a patch (only 'full' is reproduced)")
    if config.projector_hidden_act != "gelu":
        problems.append(f"projector_hidden_act {config.projector_hidden_act!r}: dynvlm's projector is GELU (erf)")
    if not getattr(config, "multimodal_projector_bias", True):
        problems.append("multimodal_projector_bias false: dynvlm's projector has biases")
    if problems:
        raise UnsupportedCheckpoint(f"{KIND}: cannot import this checkpoint: " + "; ".join(problems))


def pooled_grid(grid: tuple[int, int]) -> tuple[int, int]:
    """LLaVA-OneVision's video pooling: the ``h x w`` grid bilinearly resized to ``ceil(h/2) x ceil(w/2)``."""
    return math.ceil(grid[0] / 2), math.ceil(grid[1] / 2)


def target_modules(config: Any) -> dict[str, nn.Module]:
    """The dynvlm parts a checkpoint of ``config`` becomes (built wherever the caller's default device is,
    e.g. meta): ``encoder`` (``SiglipVisionModel``), ``projector`` (:class:`Projector` with a separator),
    ``llm`` (``AutoModelForCausalLM`` of the text config)."""
    from transformers import AutoModelForCausalLM, SiglipVisionModel

    vc, tc = config.vision_config, config.text_config
    return {
        "encoder": SiglipVisionModel(vc),
        "projector": Projector(int(vc.hidden_size), int(tc.hidden_size), depth=2, separator=True),
        "llm": AutoModelForCausalLM.from_config(tc),
    }


def plan_import(config: Any, source: Mapping[str, Tensor], targets: Mapping[str, nn.Module]) -> ImportPlan:
    """Map every key of ``source`` (a ``LlavaOnevisionForConditionalGeneration`` state dict) onto ``targets``.

    Raises:
        UnsupportedCheckpoint: a source key no rule maps, a mapped key a target lacks or with another shape, or
            a target key no source key fills, each named.
    """
    check_architecture(config)
    mapping: dict[str, tuple[str, str]] = {}
    unmapped = []
    for key in source:
        hit = map_key(key)
        if hit is None:
            unmapped.append(key)
        else:
            mapping[key] = hit
    if unmapped:
        raise UnsupportedCheckpoint(f"{KIND}: {len(unmapped)} checkpoint keys have no place in dynvlm: {', '.join(unmapped[:8])}"
                           f"{', ...' if len(unmapped) > 8 else ''}")
    own = {part: m.state_dict() for part, m in targets.items()}
    bad = [f"{k} -> {part}:{t}" + ("" if t not in own[part] else f" {tuple(source[k].shape)} vs {tuple(own[part][t].shape)}")
           for k, (part, t) in mapping.items() if t not in own[part] or own[part][t].shape != source[k].shape]
    if bad:
        raise UnsupportedCheckpoint(f"{KIND}: {len(bad)} keys do not fit dynvlm's parts: {', '.join(bad[:8])}")
    filled = {(part, t) for part, t in mapping.values()}
    empty = [f"{part}:{t}" for part, sd in own.items() for t in sd if (part, t) not in filled]
    if empty:
        raise UnsupportedCheckpoint(f"{KIND}: the checkpoint does not fill {len(empty)} dynvlm weights: {', '.join(empty[:8])}")
    vc = config.vision_config
    side = int(vc.image_size) // int(vc.patch_size)
    a, b = pooled_grid((side, side))
    unused = [f"{part}:{t}" for part, t in mapping.values() for p in UNUSED.get(part, ()) if t.startswith(p)]
    return ImportPlan(mapping, int(config.vision_feature_layer), a * b, (side, side), sorted(unused))


def plan_from_config(config: Any) -> ImportPlan:
    """:func:`plan_import` for a published config, built on the meta device (no weights, seconds)."""
    from transformers import LlavaOnevisionForConditionalGeneration

    with torch.device("meta"):
        model = LlavaOnevisionForConditionalGeneration(config)
        targets = target_modules(config)
    return plan_import(config, model.state_dict(), targets)


# -- the import command -----------------------------------------------------------------------


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _preprocessor(path: Path) -> dict[str, Any]:
    """Mean/std of the checkpoint's video (else image) processor; SigLIP's 0.5 when it has none."""
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        file = path / name
        if file.is_file():
            data = json.loads(file.read_text())
            return {"image_mean": list(data.get("image_mean", SIGLIP_MEAN)), "image_std": list(data.get("image_std", SIGLIP_STD)),
                    "do_center_crop": False, "source": name}
    return {"image_mean": list(SIGLIP_MEAN), "image_std": list(SIGLIP_STD), "do_center_crop": False}


def ready_config(plan: ImportPlan, dtype: str, frames: int = 32) -> str:
    """``model.yaml``: the imported model as LLaVA-OneVision runs a video (``frames`` uniformly sampled)."""
    m = plan.tokens_per_frame
    return f"""# Imported by `dynvlm import {KIND}` (manifest.json). Reproduces the checkpoint's video forward:
# {plan.grid[0]}x{plan.grid[1]} patches -> projector -> bilinear to {m} tokens per frame -> + separator -> LLM.
# Evaluate training-free with another compressor / budget through overrides, e.g.
#   dynvlm eval ${{this file}} model.compressor.name=tome --data FILE
name: imported
output_dir: ${{here}}/runs
model:
  encoder: {{name: siglip, path: ${{here}}/encoder, select_layer: {plan.select_layer}, dtype: {dtype}}}
  compressor: {{name: bilinear}}
  compressor_at: after_projector
  projector: {{depth: 2, separator: true}}
  prompt: {{name: llava_ov}}
  llm: {{name: hf, path: ${{here}}/llm, dtype: {dtype}}}
budget: {{tokens_per_frame: {m}, max_tokens: {m * frames}, max_frames: {frames}, min_tokens_per_frame: 1}}
stage: {{name: video_sft, resume_from: ${{here}}/projector.safetensors}}
eval: {{mode: loglik}}
"""


def write_checkpoint(path: Path, state: Mapping[str, Tensor], config_file: Path) -> None:
    """A dynvlm checkpoint of the imported weights outside the encoder and LLM folders (the projector and
    separator) with the ready config as what it was "trained" with, so ``dynvlm eval SWEEP.yaml
    --checkpoint imported.ckpt`` evaluates the imported model at every point of a training-free grid."""
    from dynvlm.config import load_config
    from dynvlm.model.checkpoint import CKPT_KEY
    from dynvlm.util.configs import config_dict

    config = config_dict(load_config(config_file, validate=False))
    torch.save({"state_dict": {k: v.contiguous() for k, v in state.items()},
                "hyper_parameters": {"config": config},
                CKPT_KEY: {"trainable": [], "carried": sorted(state), "stage": "imported"}}, str(path))


def import_llava_onevision(path: str | Path, out: str | Path, frames: int = 32,
                           log: Any = lambda line: None) -> dict[str, Any]:
    """Import the ``LlavaOnevisionForConditionalGeneration`` checkpoint folder ``path`` into ``out``
    (see the module docstring); returns the manifest.

    Raises:
        UnsupportedCheckpoint: the folder is not a LLaVA-OneVision checkpoint dynvlm can reproduce, or a key
            has no place (named).
    """
    from transformers import AutoConfig, AutoTokenizer, LlavaOnevisionForConditionalGeneration

    src, dst = Path(path).expanduser(), Path(out).expanduser()
    if not (src / "config.json").is_file():
        raise UnsupportedCheckpoint(f"{KIND}: {str(src)!r} holds no config.json (a folder saved with save_pretrained)")
    config = AutoConfig.from_pretrained(str(src), local_files_only=True)
    check_architecture(config)
    log(f"loading {src}")
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(str(src), local_files_only=True, dtype="auto")
    source = model.state_dict()
    with torch.device("meta"):
        shapes = target_modules(config)
    plan = plan_import(config, source, shapes)
    dtype = str(next(iter(source.values())).dtype).removeprefix("torch.")
    dst.mkdir(parents=True, exist_ok=True)
    parts: dict[str, dict[str, Tensor]] = {"encoder": {}, "projector": {}, "llm": {}}
    for key, (part, target) in plan.mapping.items():
        parts[part][target] = source[key]
    log(f"writing {dst}/encoder, {dst}/llm and {dst}/projector.safetensors")
    for part in ("encoder", "llm"):
        module = shapes[part]
        module.load_state_dict(parts[part], strict=True, assign=True)
        if part == "llm" and getattr(config.text_config, "tie_word_embeddings", False):
            module.tie_weights()
        module.save_pretrained(dst / part)
    (dst / "encoder" / "preprocessor_config.json").write_text(json.dumps(_preprocessor(src), indent=2) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(dst / "llm")
    from safetensors.torch import save_file

    save_file({f"projector.{k}": v.contiguous() for k, v in parts["projector"].items()}, str(dst / "projector.safetensors"))
    (dst / "model.yaml").write_text(ready_config(plan, dtype, frames))
    write_checkpoint(dst / "imported.ckpt", {f"projector.{k}": v for k, v in parts["projector"].items()},
                     dst / "model.yaml")
    manifest = {
        "source": {"kind": KIND, "path": str(src.resolve()), "files": _files(src)},
        "architecture": {"grid": list(plan.grid), "tokens_per_frame": plan.tokens_per_frame,
                         "select_layer": plan.select_layer, "dtype": dtype,
                         "video_token_id": getattr(config, "video_token_id", None)},
        "key_map": {k: f"{part}:{t}" for k, (part, t) in plan.mapping.items()},
        "unused": {"keys": plan.unused, "why": UNUSED_WHY},
        "written": {name: sha256(dst / name) for name in [*(f"{part}/{f}" for part in ("encoder", "llm")
                                                              for f in _files(dst / part)),
                                                            "projector.safetensors", "model.yaml", "imported.ckpt"]},
    }
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"imported {len(plan.mapping)} tensors; config: {dst / 'model.yaml'}")
    return manifest

