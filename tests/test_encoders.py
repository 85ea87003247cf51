"""Encoder plugins: tiny CLIP/SigLIP saved with save_pretrained, loaded by path, run on decoded video frames."""

import json

import pytest
import torch
from tiny_vlm import ENCODER, colour_samples, save_clip, save_siglip
from transformers import CLIPVisionModel, SiglipVisionModel

import dynvlm
from dynvlm.plugins.encoders.hf_vision import CLIP_MEAN, CLIP_STD


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    return {"clip": save_clip(root / "clip"), "siglip": save_siglip(root / "siglip")}


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return colour_samples(tmp_path_factory.mktemp("videos"), 1)[0].frames  # uint8 [4, 24, 24, 3]


HF = {"clip": CLIPVisionModel, "siglip": SiglipVisionModel}


def test_encoders_are_registered():
    assert {"clip", "siglip"} <= set(dynvlm.get_registry().names("encoder"))


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_path_loaded_encoder_matches_the_hf_hidden_state(name, folders, frames):
    enc = dynvlm.build_component("encoder", {"name": name, "path": folders[name]})
    assert enc.grid == (4, 4) and enc.width == 32 and enc.image_size == 16
    pixels = enc.preprocess(frames)
    assert pixels.shape == (4, 3, 16, 16) and pixels.dtype == torch.float32
    out = enc(pixels)
    assert out.shape == (4, 16, 32)  # CLS dropped for CLIP; SigLIP has none
    ref = HF[name].from_pretrained(folders[name], local_files_only=True)
    hidden = ref(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(out, hidden[:, 1:] if name == "clip" else hidden)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_a_training_step_reaches_every_kept_parameter(name, folders, frames):
    enc = dynvlm.build_component("encoder", {"name": name, "path": folders[name], "select_layer": -1})
    params = list(enc.parameters())
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.1)
    loss = enc(enc.preprocess(frames)).pow(2).mean()
    loss.backward()
    # layers after select_layer and pooling heads were removed, so no parameter is left without a gradient
    assert all(p.grad is not None for p in params)
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, params))


def test_select_layer_keeps_only_the_layers_it_needs(folders, frames):
    last = dynvlm.build_component("encoder", {"name": "clip", "path": folders["clip"], "select_layer": -1})
    penult = dynvlm.build_component("encoder", {"name": "clip", "path": folders["clip"]})
    emb = dynvlm.build_component("encoder", {"name": "clip", "path": folders["clip"], "select_layer": 0})
    assert (last.kept_layers, penult.kept_layers, emb.kept_layers) == (2, 1, 0)
    px = last.preprocess(frames)
    assert not torch.allclose(last(px), penult(px))
    assert emb(px).shape == (4, 16, 32)


def test_inline_config_builds_a_random_tower(frames):
    enc = dynvlm.build_component("encoder", {"name": "siglip", "config": dict(ENCODER, image_size=24, patch_size=6)})
    assert enc.grid == (4, 4)
    assert enc(enc.preprocess(frames)).shape == (4, 16, 32)


def test_clip_preprocess_resizes_centre_crops_and_normalises(folders):
    enc = dynvlm.build_component("encoder", {"name": "clip", "path": folders["clip"]})
    # 16 x 48 frame: left third red, middle green, right blue -> the centre crop is all green
    f = torch.zeros(1, 16, 48, 3, dtype=torch.uint8)
    f[:, :, :16, 0] = 255
    f[:, :, 16:32, 1] = 255
    f[:, :, 32:, 2] = 255
    x = enc.preprocess(f)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    expected = (torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1) - mean) / std
    torch.testing.assert_close(x[0, :, 4:12, 4:12], expected.expand(3, 8, 8), atol=1e-4, rtol=0)


def test_siglip_preprocess_squashes_without_crop_and_reads_the_folder_config(folders, tmp_path):
    import shutil

    folder = tmp_path / "siglip"
    shutil.copytree(folders["siglip"], folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0, 0, 0], "image_std": [1, 1, 1]}))
    enc = dynvlm.build_component("encoder", {"name": "siglip", "path": str(folder)})
    f = torch.zeros(1, 16, 48, 3, dtype=torch.uint8)
    f[:, :, :16, 0] = 255
    x = enc.preprocess(f)
    assert x.shape == (1, 3, 16, 16)
    assert x[0, 0, :, 0].min() > 0.99  # the red third survives: nothing was cropped
    assert x.min() >= 0 and x.max() <= 1  # mean 0 / std 1 from preprocessor_config.json


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ({}, ValueError, "exactly one of 'path'"),
        ({"path": "/nonexistent/clip"}, FileNotFoundError, "does not exist"),
        ({"config": ENCODER, "select_layer": 3}, ValueError, r"select_layer=3 is outside \[-3, 2\]"),
        ({"config": ENCODER, "dtype": "float8"}, ValueError, "dtype must be one of"),
    ],
)
def test_bad_encoder_specs_say_what_is_wrong(spec, error, message):
    with pytest.raises(error, match=message):
        dynvlm.build_component("encoder", {"name": "clip", **spec})


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_an_image_size_not_a_multiple_of_the_patch_floors_the_grid_as_the_tower_does(name):
    # SigLIP-384/14 of LLaVA-OneVision: 27x27 patches, the last pixels unused; here 18 px with 4 px patches
    torch.manual_seed(0)
    enc = dynvlm.build_component("encoder", {"name": name, "config": dict(ENCODER, image_size=18), "select_layer": -1})
    assert enc.grid == (4, 4) and enc.image_size == 18
    frames = torch.randint(0, 256, (2, 20, 22, 3), dtype=torch.uint8)
    px = enc.preprocess(frames)
    assert px.shape == (2, 3, 18, 18)
    out = enc(px)
    assert out.shape == (2, 16, ENCODER["hidden_size"])
    hf = enc.model(px, output_hidden_states=True).hidden_states[-1]  # the tower's own answer
    assert torch.equal(out, hf[:, 1:] if name == "clip" else hf)


def test_bad_frames_are_rejected(folders):
    enc = dynvlm.build_component("encoder", {"name": "clip", "path": folders["clip"]})
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        enc.preprocess(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        enc.preprocess(torch.zeros(2, 16, 16, 3))
    with pytest.raises(ValueError, match="call preprocess"):
        enc(torch.zeros(2, 16, 16, 3))


def test_gradient_checkpointing_gives_the_same_gradients(folders, frames):
    grads = []
    for on in (False, True):
        enc = dynvlm.build_component("encoder", {"name": "clip", "path": folders["clip"], "select_layer": -1,
                                                 "gradient_checkpointing": on}).train()
        enc(enc.preprocess(frames)).pow(2).mean().backward()
        grads.append([p.grad for p in enc.parameters()])
    assert any(getattr(mod, "gradient_checkpointing", False) for mod in enc.model.modules())
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
