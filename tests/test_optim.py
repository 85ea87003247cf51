"""What the optimizer sees: weight decay by role (not shape), precision preparation, strategies from YAML,
and the answer-only loss (the same value as the full-logits loss)."""

from pathlib import Path

import pytest
import torch
import yaml
from tiny_vlm import colour_samples, inline_model, run_config

from dynvlm.config import ConfigError, load_config
from dynvlm.model.optim import clean_name, param_groups
from dynvlm.model.video_llm import VideoLLM
from dynvlm.run.strategy import CPUFSDPStrategy, layer_classes, make_strategy, prepare_precision


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return colour_samples(tmp_path_factory.mktemp("videos"), 3, seconds=2, max_frames=4)


def _shape_groups(model):
    """The old rule: decay iff ``p.dim() >= 2``."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            part = "encoder" if name.startswith("encoder.") else "main"
            out.setdefault(f"{part}{'' if p.dim() >= 2 else '/no_decay'}", set()).add(name)
    return out


@pytest.mark.parametrize("compressor", ["pool", "prune", "tome", "bilinear", "identity", "random"])
def test_decay_by_role_gives_the_shape_rules_groups_on_the_tiny_configs(tmp_path, compressor):
    kw = {"key": "proj", "key_dim": 8} if compressor == "tome" else {}
    model = VideoLLM(run_config(tmp_path, model=inline_model(compressor, **kw), optim={"weight_decay": 0.1}))
    names = {id(p): n for n, p in model.named_parameters()}
    by_role = {g["name"]: {names[id(p)] for p in g["params"]} for g in model.param_groups()}
    assert by_role == _shape_groups(model)
    assert "encoder.model.embeddings.class_embedding" in str(by_role["encoder/no_decay"])  # a vector: no decay
    assert {g["name"]: g["weight_decay"] for g in model.param_groups()}["main"] == 0.1


def test_decay_by_role_ignores_flattened_shapes():
    # FSDP hands the optimizer 1-D views of every weight: the role, not the shape, decides
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    for _, p in net.named_parameters():
        p.data = p.data.flatten()
    groups = {g["name"]: len(g["params"]) for g in param_groups(net, 1e-3, 0.1, 1.0)}
    assert groups == {"main": 1, "main/no_decay": 3}
    assert clean_name("llm._fsdp_wrapped_module.model.layers.0._checkpoint_wrapped_module.mlp.weight") == "llm.model.layers.0.mlp.weight"


def test_the_answer_only_loss_equals_the_full_logits_loss(tmp_path, samples):
    torch.manual_seed(0)
    full = VideoLLM(run_config(tmp_path))
    cfg = run_config(tmp_path)
    cfg["optim"] = {**cfg["optim"], "answer_only_loss": True}
    answers = VideoLLM(cfg)
    answers.load_state_dict(full.state_dict())
    a, b = full(samples)["loss"], answers(samples)["loss"]
    torch.testing.assert_close(b, a, rtol=1e-6, atol=0)  # bit-equal on this machine; float order may differ
    a.backward()
    b.backward()
    for (name, p), q in zip(full.named_parameters(), answers.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_the_answer_only_loss_never_builds_prompt_by_vocabulary_logits(tmp_path, samples):
    cfg = run_config(tmp_path)
    cfg["optim"] = {**cfg["optim"], "answer_only_loss": True}
    model = VideoLLM(cfg)
    rows = []
    model.llm.model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows.append(o.shape[:-1].numel()))
    model(samples)
    prompt = model.prompts.collate(model.encode_prompts(samples, model.plan(samples)), "right")
    answer_tokens = int((prompt.labels[:, 1:] != -100).sum())
    assert rows == [answer_tokens] and answer_tokens < prompt.labels.numel() / 5


def test_precision_is_untouched_unless_a_half_precision_is_asked_for(tmp_path):
    model = inline_model()
    model["llm"]["dtype"] = "bfloat16"
    vlm = VideoLLM(run_config(tmp_path, model=model))
    before = {n: p.dtype for n, p in vlm.named_parameters()}
    assert prepare_precision(vlm, {"precision": "32-true"}) is None
    assert {n: p.dtype for n, p in vlm.named_parameters()} == before  # not asked: left as built
    assert prepare_precision(vlm, {"precision": "bf16-mixed"})
    assert {p.dtype for p in vlm.parameters()} == {torch.float32}  # fp32 master weights
    assert prepare_precision(vlm, {"precision": "bf16-true"})
    assert {p.dtype for p in vlm.parameters()} == {torch.bfloat16}


def test_a_strategy_mapping_builds_fsdp_with_layer_units(tmp_path):
    vlm = VideoLLM(run_config(tmp_path))
    assert {c.__name__ for c in layer_classes(vlm)} == {"Qwen2DecoderLayer", "CLIPEncoderLayer"}
    spec = {"name": "fsdp", "activation_checkpointing": True, "state_dict": "sharded", "sharding": "SHARD_GRAD_OP"}
    strategy = make_strategy({"accelerator": "cpu", "strategy": spec, "precision": "bf16-mixed"}, vlm)
    assert isinstance(strategy, CPUFSDPStrategy)
    assert strategy._state_dict_type == "sharded" and strategy.sharding_strategy.name == "SHARD_GRAD_OP"
    assert strategy.mixed_precision.param_dtype == torch.bfloat16 and strategy.mixed_precision.reduce_dtype == torch.float32
    assert vlm.llm.model.model.gradient_checkpointing
    assert make_strategy({"strategy": "ddp"}, vlm) == "ddp"  # a plain name is Lightning's


def test_a_strategy_mapping_is_validated(tmp_path):
    path = Path(tmp_path) / "run.yaml"
    cfg = run_config(tmp_path, trainer={"strategy": {"name": "fsdp", "wrapping": "layers"}})
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="trainer.strategy.wrapping: unknown key"):
        load_config(path)
    cfg["trainer"] = {"strategy": {"name": "deepspeed"}}
    path.write_text(yaml.safe_dump(cfg))
    vlm = VideoLLM(load_config(path))
    if __import__("importlib").util.find_spec("deepspeed") is None:
        with pytest.raises(ConfigError, match="pip install deepspeed"):
            make_strategy(load_config(path).trainer, vlm)


def test_the_config_reference_documents_every_strategy_key():
    import dataclasses

    from dynvlm.schema import StrategyConfig

    doc = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    missing = [f.name for f in dataclasses.fields(StrategyConfig) if f"`trainer.strategy.{f.name}`" not in doc]
    assert not missing and "`optim.answer_only_loss`" in doc, missing


def test_a_sharded_index_naming_code_is_refused(tmp_path):
    import pickle

    from dynvlm.model.checkpoint import CheckpointRefused, read_sharded_checkpoint

    class Evil:
        def __reduce__(self):
            return (__import__("os").system, ("echo owned",))

    folder = tmp_path / "last.ckpt"
    folder.mkdir()
    torch.save({"global_step": 1}, folder / "meta.pt")
    (folder / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointRefused, match="posix.system"):
        read_sharded_checkpoint(folder)
