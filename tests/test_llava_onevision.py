"""Importing LLaVA-OneVision: a tiny random ``LlavaOnevisionForConditionalGeneration`` saved here is
imported with ``dynvlm import``; with the imported config dynvlm's logits equal Hugging Face's video
forward exactly (fp32), with dynvlm's default order they do not; the published 0.5B and 7B configs map
every key (on the meta device); import -> eval runs end to end."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from tiny_vlm import WORDS

from dynvlm.cli.main import main
from dynvlm.config import load_config
from dynvlm.data.synth import generate, vocabulary
from dynvlm.model.llava_onevision import (
    UnsupportedCheckpoint,
    map_key,
    plan_from_config,
    plan_import,
    target_modules,
)
from dynvlm.model.prompt import IMAGE_TOKEN_ID
from dynvlm.model.video_llm import VideoLLM
from dynvlm.records import Sample, Turn

PUBLISHED = Path(__file__).resolve().parents[1] / "experiments" / "llava_ov" / "published"
#: 26 px with 4 px patches: a 6x6 grid (26 is not a multiple of 4, as SigLIP-384/14), pooled to 3x3
VISION = dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
              num_attention_heads=2, image_size=26, patch_size=4, vision_use_head=False)
TEXT = dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=2048, initializer_range=0.2)
QUESTION = "what colour is the video ?"


def tiny_tokenizer():
    from dynvlm.plugins.llms.hf import build_word_tokenizer

    tok = build_word_tokenizer(WORDS + vocabulary(max_duration=14, options=4))
    tok.add_tokens(["<video>"], special_tokens=True)  # LLaVA-OV's video placeholder token
    return tok


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """A random tiny LLaVA-OneVision with its tokenizer, saved with ``save_pretrained``."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    tok = tiny_tokenizer()
    cfg = LlavaOnevisionConfig(vision_config=VISION, text_config=dict(TEXT, vocab_size=len(tok)),
                               image_token_index=tok.convert_tokens_to_ids("<image>"),
                               video_token_index=tok.convert_tokens_to_ids("<video>"))
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(cfg)
    folder = tmp_path_factory.mktemp("llava_ov") / "hf"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def imported(hf_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "dynvlm"
    assert main(["import", "llava-onevision", str(hf_folder), "--out", str(out), "--frames", "8"]) == 0
    return out


def video_sample(frames: int = 4) -> Sample:
    g = torch.Generator().manual_seed(5)
    return Sample(frames=torch.randint(0, 256, (frames, 30, 34, 3), generator=g, dtype=torch.uint8),
                  timestamps=[float(t) for t in range(frames)],
                  conversation=[Turn("human", f"<video>\n{QUESTION}"), Turn("gpt", "red")], id="v0")


def dynvlm_logits(model: VideoLLM, sample: Sample) -> tuple[torch.Tensor, list[int], tuple[int, int], torch.Tensor]:
    """dynvlm's walk on one sample: (logits [L, V], prompt ids, answer span, the normalised kept frames)."""
    plans = model.plan([sample])
    encoded = model.encode_prompts([sample], plans)
    batch = model.prompts.collate(encoded, "right")
    visual = model.visual_features([sample], plans).tokens
    with torch.no_grad():
        logits = model.llm(model.splice(batch, visual), batch.attention_mask).logits[0]
    pixels = model.encoder.preprocess(sample.frames[list(plans[0].indices)])
    return logits, encoded[0].ids, encoded[0].answer_spans[-1], pixels


def hf_logits(folder: Path, pixels: torch.Tensor, frames: int, tokens_per_frame: int) -> tuple[torch.Tensor, list[int]]:
    """Hugging Face's own video forward on the same normalised frames and question (its prompt format)."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from dynvlm.plugins.llms.hf import _load_tokenizer

    tok = _load_tokenizer(folder, False)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(str(folder), local_files_only=True).eval()
    video = "<video>" * (frames * tokens_per_frame + 1)  # what the processor expands <video> to: frames + newline
    text = f"<|im_start|>user\n{video}\n{QUESTION}<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), pixel_values_videos=pixels[None],
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out.logits[0], ids


def test_imported_model_reproduces_the_hf_video_forward_exactly(hf_folder, imported):
    cfg = load_config(imported / "model.yaml")
    torch.manual_seed(0)
    model = VideoLLM(cfg).eval()
    sample = video_sample()
    logits, ids, (start, end), pixels = dynvlm_logits(model, sample)
    video_id = json.loads((hf_folder / "config.json").read_text())["video_token_index"]
    ref, ref_ids = hf_logits(hf_folder, pixels, frames=4, tokens_per_frame=9)
    # the same prompt: LLaVA-OV's template, 4 frames x 9 tokens + the newline, contiguous
    assert [video_id if i == IMAGE_TOKEN_ID else i for i in ids] == ref_ids
    assert ids.count(IMAGE_TOKEN_ID) == 4 * 9 + 1
    assert end > start
    assert torch.equal(logits[start - 1 : end - 1], ref[start - 1 : end - 1])  # every answer position
    assert torch.equal(logits, ref)  # and every other position

    # dynvlm's default order (compress, then project; no separator; its own prompt) is another model
    default = load_config(imported / "model.yaml", ["model.compressor_at=before_projector"])
    torch.manual_seed(0)
    other = VideoLLM(default).eval()
    logits2, ids2, (start2, end2), _ = dynvlm_logits(other, sample)
    assert ids2 == ids  # same prompt, so only the placement differs
    diff = (logits2[start2 - 1 : end2 - 1] - ref[start - 1 : end - 1]).abs().max()
    assert diff > 1e-4, f"compressing before the projector should change the answer logits (max diff {diff})"


def test_the_manifest_accounts_for_every_key(hf_folder, imported):
    from transformers import LlavaOnevisionForConditionalGeneration

    manifest = json.loads((imported / "manifest.json").read_text())
    hf = LlavaOnevisionForConditionalGeneration.from_pretrained(str(hf_folder), local_files_only=True)
    assert set(manifest["key_map"]) == set(hf.state_dict())  # every tensor of the model has a place
    assert manifest["key_map"]["model.image_newline"] == "projector:separator"
    assert manifest["key_map"]["lm_head.weight"] == "llm:lm_head.weight"
    assert manifest["unused"]["keys"] == ["encoder:post_layernorm.bias", "encoder:post_layernorm.weight"]
    assert set(manifest["source"]["files"]) >= {"config.json", "model.safetensors"}
    assert manifest["architecture"]["tokens_per_frame"] == 9 and manifest["architecture"]["select_layer"] == -1
    for name, digest in manifest["written"].items():
        assert hashlib.sha256((imported / name).read_bytes()).hexdigest() == digest, name


def test_an_unmapped_key_is_an_error_naming_it(hf_folder):
    from transformers import AutoConfig, LlavaOnevisionForConditionalGeneration

    config = AutoConfig.from_pretrained(str(hf_folder), local_files_only=True)
    with torch.device("meta"):
        source = dict(LlavaOnevisionForConditionalGeneration(config).state_dict())
        targets = target_modules(config)
    plan_import(config, source, targets)  # the real keys map
    source["model.extra_head.weight"] = torch.zeros(2, device="meta")
    with pytest.raises(UnsupportedCheckpoint, match=r"model\.extra_head\.weight"):
        plan_import(config, source, targets)
    del source["model.extra_head.weight"]
    del source["model.image_newline"]
    with pytest.raises(UnsupportedCheckpoint, match=r"does not fill .*projector:separator"):
        plan_import(config, source, targets)
    assert map_key("model.language_model.layers.0.mlp.up_proj.weight") == ("llm", "model.layers.0.mlp.up_proj.weight")


def test_options_the_walk_does_not_reproduce_are_refused(hf_folder):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(hf_folder), local_files_only=True)
    config.vision_feature_layer = [-2, -1]
    with pytest.raises(UnsupportedCheckpoint, match="several layers"):
        plan_from_config(config)


def test_both_key_layouts_import(hf_folder, imported, tmp_path):
    """transformers 5 saves the hub's original layout (language_model.model.*, vision_tower.*, image_newline)
    and loads it renamed to model.language_model.* etc.; a file written in the new layout imports the same."""
    from safetensors.torch import load_file, save_file

    saved = load_file(str(hf_folder / "model.safetensors"))
    assert "language_model.model.norm.weight" in saved and "image_newline" in saved  # the original layout
    new = tmp_path / "new"
    new.mkdir()
    for f in hf_folder.iterdir():
        if f.name != "model.safetensors":
            (new / f.name).write_bytes(f.read_bytes())
    renames = [("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
               ("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector."),
               ("image_newline", "model.image_newline")]
    state = {}
    for k, v in saved.items():
        for a, b in renames:
            if k.startswith(a):
                k = b + k[len(a):]
                break
        state[k] = v
    save_file(state, str(new / "model.safetensors"), metadata={"format": "pt"})
    assert main(["import", "llava-onevision", str(new), "--out", str(tmp_path / "out"), "--frames", "8"]) == 0
    old_files = json.loads((imported / "manifest.json").read_text())["written"]
    new_files = json.loads((tmp_path / "out" / "manifest.json").read_text())["written"]
    for name in ("projector.safetensors", "encoder/model.safetensors", "llm/model.safetensors", "model.yaml"):
        assert new_files[name] == old_files[name], name


@pytest.mark.parametrize("name", ["llava-onevision-qwen2-0.5b-ov", "llava-onevision-qwen2-7b-ov"])
def test_published_configs_map_every_key_on_meta(name):
    from transformers import LlavaOnevisionConfig

    data = json.loads((PUBLISHED / f"{name}.json").read_text())
    plan = plan_from_config(LlavaOnevisionConfig(**{k: v for k, v in data.items() if k != "architectures"}))
    assert plan.grid == (27, 27) and plan.tokens_per_frame == 196 and plan.select_layer == -1
    parts = {part for part, _ in plan.mapping.values()}
    assert parts == {"encoder", "projector", "llm"}
    assert plan.mapping["model.image_newline"] == ("projector", "separator")


def test_import_then_eval_runs_end_to_end(imported, tmp_path):
    synth = tmp_path / "synth"
    generate({"out": str(synth), "seed": 3, "train": 0, "val": 0, "test": 2, "size": 16, "min_duration": 12,
              "max_duration": 14, "max_visits": 2, "max_visit_seconds": 3}, progress=False)
    out = tmp_path / "eval"
    assert main(["eval", str(imported / "model.yaml"), "--data", str(synth / "test_mc.jsonl"), "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["questions"] == len((synth / "test_mc.jsonl").read_text().splitlines()) > 0
    assert 0.0 <= report["accuracy"] <= 1.0
    assert report["used"]["tokens_per_frame"] == [9]  # LLaVA-OV's pooled 3x3 of the 6x6 grid
    assert report["evaluated_with"]["compressor"] == "bilinear"
    # training-free: the same imported model with another compressor at the same tokens per frame
    out2 = tmp_path / "eval_tome"
    assert main(["eval", str(imported / "model.yaml"), "model.compressor.name=tome", "--data",
                 str(synth / "test_mc.jsonl"), "--out", str(out2)]) == 0
    tome = json.loads((out2 / "eval.json").read_text())
    assert tome["questions"] == report["questions"] and tome["evaluated_with"]["compressor"] == "tome"


def knob_config(**model):
    from tiny_vlm import ENCODER, LLM

    encoder = dict(ENCODER, hidden_size=16, intermediate_size=32)  # C = 16, D = 32
    return {"model": {"encoder": {"name": "siglip", "config": encoder}, "compressor": {"name": "prune"},
                      "llm": {"name": "hf", "config": dict(LLM), "vocabulary": list(WORDS)}, **model},
            "budget": {"max_tokens": 16, "tokens_per_frame": 4, "max_frames": 4}}


def test_the_knobs_train_after_the_projector_with_a_separator():
    """LLaVA-OV's order with a learned compressor (prune's scorer at width D) and the separator: a
    training step reaches the separator, which sits right after the video's last frame."""
    torch.manual_seed(0)
    model = VideoLLM(knob_config(compressor_at="after_projector", projector={"separator": True},
                                 prompt={"name": "llava_ov"}))
    assert model.compressor.dim == model.llm.width != model.encoder.width
    sample = video_sample(3)
    out = model([sample], training=True)
    out["loss"].backward()
    assert model.projector.separator.grad is not None and model.projector.separator.grad.abs().sum() > 0
    assert out["actual_tokens"] == 3 * 4 + 1 and out["visual_tokens"] == 3 * 4
    plans = model.plan([sample])
    ids = model.encode_prompts([sample], plans)[0].ids
    first = ids.index(IMAGE_TOKEN_ID)
    assert ids[first : first + 13] == [IMAGE_TOKEN_ID] * 13 and ids[first + 13] != IMAGE_TOKEN_ID
    visual = model.visual_features([sample], plans).tokens[0]
    assert torch.equal(visual[-1], model.projector.separator.detach())


def test_a_compressor_that_needs_the_encoders_width_is_refused_after_the_projector(monkeypatch):
    from dynvlm.plugins.compressors.pool import AdaptivePool

    monkeypatch.setattr(AdaptivePool, "needs_encoder_width", True)
    cfg = knob_config(compressor_at="after_projector")
    cfg["model"]["compressor"] = {"name": "pool"}
    with pytest.raises(ValueError, match="needs_encoder_width"):
        VideoLLM(cfg)
    VideoLLM(knob_config())  # before the projector it is fine


def test_the_llava_ov_recipes_need_only_their_paths(imported, tmp_path):
    """experiments/llava_ov with the /path/to/... entries pointed at an import: the recipe's model is the
    import's model.yaml, and the training-free study runs on imported.ckpt (two of its points here)."""
    from dynvlm.data.synth import generate
    from dynvlm.evaluation.transfer import run_transfer
    from dynvlm.util.configs import config_dict

    recipes = PUBLISHED.parent
    paths = [f"model.encoder.path={imported / 'encoder'}", f"model.llm.path={imported / 'llm'}",
             f"stage.resume_from={imported / 'projector.safetensors'}", "model.encoder.dtype=float32",
             "model.llm.dtype=float32", f"output_dir={tmp_path}", "trainer.accelerator=cpu"]
    settings = [line for p in recipes.glob("*.yaml") for line in p.read_text().splitlines() if not line.startswith("#")]
    assert sum(line.count("/path/to/llava-ov-dynvlm/") for line in settings) == 3  # encoder, llm, projector
    written = config_dict(load_config(imported / "model.yaml"))["model"]
    for name in ("reproduce", "study", "finetune"):
        cfg = config_dict(load_config(recipes / f"{name}.yaml", paths))
        assert cfg["model"] == written, name
    study = config_dict(load_config(recipes / "study.yaml", paths))
    assert study["budget"]["max_tokens"] == 196 * 32
    synth = tmp_path / "synth"
    generate({"out": str(synth), "seed": 3, "train": 0, "val": 0, "test": 1, "size": 16, "min_duration": 12,
              "max_duration": 14, "max_visits": 2, "max_visit_seconds": 3}, progress=False)
    study["data"] = {"test": str(synth / "test_mc.jsonl"), "max_samples": 2}
    study["budget"].update(tokens_per_frame=9, max_tokens=72)  # the tiny model's 3x3 pooled grid, 8 frames
    study["sweep"] = {"model.compressor.name": ["bilinear", "pool"], "budget.tokens_per_frame": [9]}
    result = run_transfer(study, checkpoint=str(imported / "imported.ckpt"), out=str(tmp_path / "transfer"))
    assert result["points"] == 2 and result["trained_with"]["label"] == "bilinear@9"
    rows = (tmp_path / "transfer" / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and "bilinear" in rows[1] and "pool" in rows[2]
