"""Training stages: freezing (checked on gradients), encoder lr ratio, resuming from a stage checkpoint."""

import warnings

import pytest
import torch
from tiny_vlm import ListDataModule, colour_samples, inline_model, run_config

from dynvlm.model.checkpoint import read_weights
from dynvlm.model.video_llm import VideoLLM
from dynvlm.run.train import fit


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return colour_samples(tmp_path_factory.mktemp("videos"), 3)


def _model(tmp_path, stage, **extra):
    # prune has parameters (its scorer), so "compressor" is trainable in a checkable way
    return VideoLLM(run_config(tmp_path, inline_model("prune"), stage=stage, **extra))


def _grads(model, samples):
    model(samples, training=True)["loss"].backward()
    return {
        part: [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in getattr(model, part).parameters()]
        for part in ("encoder", "compressor", "projector", "llm")
    }


def test_pretrain_trains_only_compressor_and_projector(tmp_path, samples):
    m = _model(tmp_path, {"name": "pretrain"})
    assert m.trainable == ("compressor", "projector")
    g = _grads(m, samples)
    assert all(g["compressor"]) and all(g["projector"])
    assert not any(g["encoder"]) and not any(g["llm"])
    assert {group["name"] for group in m.param_groups()} == {"main", "main/no_decay"}


@pytest.mark.parametrize("stage", ["image_sft", "video_sft"])
def test_sft_stages_train_the_encoder_at_a_fifth_of_lr(tmp_path, samples, stage):
    m = _model(tmp_path, {"name": stage})
    assert m.trainable == ("encoder", "compressor", "projector", "llm")
    g = _grads(m, samples)
    assert any(g["encoder"]) and any(g["llm"])
    lrs = {group["name"]: group["lr"] for group in m.param_groups()}
    assert lrs["encoder"] == pytest.approx(0.2 * lrs["main"])


def test_custom_stage_needs_a_valid_trainable_list(tmp_path):
    with pytest.raises(ValueError, match="needs stage.trainable"):
        _model(tmp_path, {"name": "custom"})
    with pytest.raises(ValueError, match="unknown module 'vit'"):
        _model(tmp_path, {"name": "custom", "trainable": ["vit"]})
    assert _model(tmp_path, {"name": "custom", "trainable": ["llm"]}).trainable == ("llm",)
    with pytest.raises(ValueError, match="no parameters"):
        VideoLLM(run_config(tmp_path, inline_model("pool"), stage={"name": "custom", "trainable": ["compressor"]}))


def test_stage_chain_keeps_what_every_stage_trained(tmp_path, samples):
    dm = ListDataModule(samples, batch_size=3)
    trainer = {"accelerator": "cpu", "max_steps": 2, "enable_progress_bar": False, "enable_model_summary": False,
               "logger": False, "limit_val_batches": 0}
    pre = fit(run_config(tmp_path, inline_model("prune"), name="pretrain", stage={"name": "pretrain"},
                         trainer=trainer), dm)
    saved = read_weights(pre["checkpoint"])
    # only the trainable modules are in the checkpoint (plus no frozen encoder/LLM weights)
    assert saved and {k.split(".")[0] for k in saved} == {"compressor", "projector"}
    ckpt = torch.load(pre["checkpoint"], weights_only=False)
    assert ckpt["hyper_parameters"]["config"]["stage"]["name"] == "pretrain"

    # image_sft resumes from it: the pretrained projector is restored, then everything trains
    sft = fit(run_config(tmp_path, inline_model("prune"), name="image_sft",
                         stage={"name": "image_sft", "resume_from": pre["checkpoint"]}, trainer=trainer), dm)
    resumed = VideoLLM(run_config(tmp_path, inline_model("prune"), seed=123,
                                  stage={"name": "image_sft", "resume_from": pre["checkpoint"]}))
    for k, v in saved.items():
        torch.testing.assert_close(resumed.state_dict()[k], v)
    sft_saved = read_weights(sft["checkpoint"])
    assert {k.split(".")[0] for k in sft_saved} == {"encoder", "compressor", "projector", "llm"}

    # a third stage that trains only the LLM still gets image_sft's encoder, compressor and
    # projector, and its own checkpoint carries them on
    third = run_config(tmp_path, inline_model("prune"), name="third", seed=7,
                       stage={"name": "custom", "trainable": ["llm"], "resume_from": sft["checkpoint"]}, trainer=trainer)
    out = fit(third, dm)
    final = read_weights(out["checkpoint"])
    for k in ("projector.net.0.weight", "compressor.scorer.0.weight", "encoder.model.embeddings.patch_embedding.weight"):
        torch.testing.assert_close(final[k], sft_saved[k])


def test_resuming_from_a_foreign_checkpoint_fails_clearly(tmp_path):
    bogus = tmp_path / "bogus.pt"
    torch.save({"state_dict": {"projector.net.0.weight": torch.zeros(3, 3)}}, bogus)
    with pytest.raises(ValueError, match="shape mismatch"):
        _model(tmp_path, {"name": "image_sft", "resume_from": str(bogus)})
    torch.save({"state_dict": {"visual_head.weight": torch.zeros(3)}}, bogus)
    with pytest.raises(ValueError, match="do not exist in this model"):
        _model(tmp_path, {"name": "image_sft", "resume_from": str(bogus)})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _model(tmp_path, {"name": "image_sft", "resume_from": str(tmp_path / "missing.ckpt")})


def test_a_base_file_with_another_compressors_weights_loads_the_rest(tmp_path):
    from safetensors.torch import save_file

    prune = _model(tmp_path, {"name": "pretrain"})
    head = {f"projector.{k}": v.contiguous() for k, v in prune.projector.state_dict().items()}
    head.update({f"compressor.{k}": torch.randn_like(v) for k, v in prune.compressor.state_dict().items()})
    save_file(head, str(tmp_path / "base.safetensors"))
    stage = {"name": "pretrain", "resume_from": str(tmp_path / "base.safetensors")}
    # prune takes its scorer from the file
    again = _model(tmp_path, stage)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in head.items())
    # pool has no scorer: the projector loads, the scorer's weights are skipped
    with pytest.warns(UserWarning, match=r"weights not used by this model were skipped \(compressor\."):
        pool = VideoLLM(run_config(tmp_path, inline_model("pool"), stage=stage))
    assert pool.carried == {k for k in head if k.startswith("projector.")}
    with warnings.catch_warnings(record=True) as again_seen:  # the same file and keys: said once per process
        warnings.simplefilter("always")
        VideoLLM(run_config(tmp_path, inline_model("pool"), stage=stage))
    assert not [w for w in again_seen if "weights not used" in str(w.message)]
    assert all(torch.equal(pool.projector.state_dict()[k.removeprefix("projector.")], v)
               for k, v in head.items() if k.startswith("projector."))
    # any other unknown weight still refuses to load
    save_file({**head, "llm.extra": torch.randn(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="llm.extra"):
        VideoLLM(run_config(tmp_path, inline_model("pool"), stage={"name": "pretrain", "resume_from": str(tmp_path / "bad.safetensors")}))
