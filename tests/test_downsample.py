"""The encoders' ``downsample`` option: frames resized before the tower so its own patch grid gives the
``a x b <= M`` tokens (position embeddings interpolated), and the model's path through it."""

import pytest
import torch
from tiny_vlm import colour_samples, inline_model, run_config, save_clip, save_qwen, save_siglip
from transformers import CLIPVisionModel, SiglipVisionModel

import dynvlm
from dynvlm.model.video_llm import VideoLLM

HF = {"clip": CLIPVisionModel, "siglip": SiglipVisionModel}
EXPECTED = {4: (2, 2), 16: (4, 4), 12: (3, 4)}  # on the tiny towers' 4x4 grid (pool's a x b rule)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    return {"clip": save_clip(root / "clip"), "siglip": save_siglip(root / "siglip"), "qwen": save_qwen(root / "qwen")}


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return colour_samples(tmp_path_factory.mktemp("videos"), 2)  # 4 and 5 frames of 24 px


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_the_tower_yields_a_times_b_tokens_with_interpolated_positions(name, folders, samples):
    enc = dynvlm.build_component("encoder", {"name": name, "path": folders[name], "downsample": True})
    ref = HF[name].from_pretrained(folders[name], local_files_only=True)
    pixels = enc.preprocess(samples[0].frames)  # [4, 3, 16, 16]
    full = enc(pixels)
    for m, (a, b) in EXPECTED.items():
        grid = enc.downsample_grid(m)
        assert grid == (a, b) and enc.downsample_tokens(m) == a * b
        small = enc.resize_to_grid(pixels, grid)
        assert small.shape == (4, 3, 4 * a, 4 * b)
        out = enc(small, grid=grid)
        assert out.shape == (4, a * b, 32)
        # the Hugging Face tower run on the same resized pixels with its own position interpolation
        hidden = ref(pixel_values=small, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states[-2]
        torch.testing.assert_close(out, hidden[:, 1:] if name == "clip" else hidden)
        if (a, b) == enc.grid:
            assert torch.equal(small, pixels) and torch.equal(out, full)
        else:  # not the full-resolution tokens, nor those tokens resized afterwards
            pooled = dynvlm.build_component("compressor", {"name": "bilinear"}, dim=32)(full, enc.grid, m).x
            assert pooled.shape == out.shape and not torch.allclose(out, pooled, atol=1e-3)


def test_a_non_square_grid_is_served(folders, samples):
    enc = dynvlm.build_component("encoder", {"name": "clip", "path": folders["clip"], "downsample": True})
    px = enc.resize_to_grid(enc.preprocess(samples[0].frames), (2, 3))
    assert px.shape == (4, 3, 8, 12)
    assert enc(px, grid=(2, 3)).shape == (4, 6, 32)


def test_frames_of_the_wrong_size_for_the_grid_are_rejected(folders, samples):
    enc = dynvlm.build_component("encoder", {"name": "clip", "path": folders["clip"], "downsample": True})
    pixels = enc.preprocess(samples[0].frames)
    with pytest.raises(ValueError, match=r"\[F, 3, 8, 8\] for the 2x2 patch grid.*resize_to_grid"):
        enc(pixels, grid=(2, 2))


def _model(folders, root, downsample, compressor, tokens):
    model = inline_model(compressor)
    model["encoder"] = {"name": "clip", "path": folders["clip"], "downsample": downsample}
    model["llm"] = {"name": "hf", "path": folders["qwen"]}
    budget = {"max_tokens": 64, "max_frames": 16, "tokens_per_frame": tokens}
    torch.manual_seed(0)
    return VideoLLM(run_config(root, model, budget=budget)).eval()


@pytest.mark.parametrize("tokens", [4, 16, 12])
def test_video_llm_encodes_each_frame_to_a_times_b_tokens(tokens, folders, samples, tmp_path):
    a, b = EXPECTED[tokens]
    down = _model(folders, tmp_path, True, "identity", tokens)
    full = _model(folders, tmp_path, False, "bilinear", tokens)  # same weights: neither compressor has any
    plans = down.plan(samples)
    assert [p.tokens for p in plans] == [a * b] * 2
    assert [len(p.indices) for p in plans] == [min(t, 64 // (a * b)) for t in (4, 5)]
    assert [p.tokens for p in full.plan(samples)] == [a * b] * 2  # bilinear's rule is the same one
    with torch.no_grad():
        visual, aux, _ = down.visual_features(samples, plans)
        ref, _, _ = full.visual_features(samples, plans)
    assert aux is None
    assert [v.shape for v in visual] == [(len(p.indices) * a * b, 32) for p in plans]
    if tokens == 16:  # the full grid: nothing resized, the same tokens as the full-resolution run
        for v, r in zip(visual, ref):
            torch.testing.assert_close(v, r)
    else:
        assert all(not torch.allclose(v, r, atol=1e-3) for v, r in zip(visual, ref))
    out = down(samples)
    assert torch.isfinite(out["loss"]) and out["tokens_per_frame"].item() == a * b


def test_dynamic_budget_groups_frames_by_their_own_grid(folders, samples, tmp_path):
    m = _model(folders, tmp_path, True, "identity", None)
    plans = m.plan(samples)
    assert [p.tokens for p in plans] == [16, 12]  # 64 // 4 = 16 -> 4x4; 64 // 5 = 12 -> 3x4
    with torch.no_grad():
        both, _, _ = m.visual_features(samples, plans)
        alone = [m.visual_features([s], [p]).tokens[0] for s, p in zip(samples, plans)]
    for x, y in zip(both, alone):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    assert [x.shape[0] for x in both] == [4 * 16, 5 * 12]
    assert m.encoder.downsample_grid(12) == (3, 4)


def test_training_reaches_the_encoder_through_the_resized_frames(folders, samples, tmp_path):
    m = _model(folders, tmp_path, True, "identity", 4).train()
    m(samples, training=True)["loss"].backward()
    grads = [p.grad for n, p in m.named_parameters() if n.startswith("encoder.")]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


def test_downsample_needs_the_identity_compressor(folders, samples, tmp_path):
    # refused when the model is built, before any batch is planned or encoded
    with pytest.raises(ValueError, match="needs model.compressor.name: identity"):
        _model(folders, tmp_path, True, "pool", 4)
    assert _model(folders, tmp_path, True, "identity", 4).compressor.keeps_all
