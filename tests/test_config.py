"""Config loading: files, base chains, overrides, interpolation, and every bad-input message."""

from __future__ import annotations

import textwrap

import pytest

import dynvlm
from dynvlm.config import ConfigError, apply_point, load_config, origins_of, sweep_keys, sweep_points, to_yaml


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def test_yaml_overrides_and_interpolation(tmp_path):
    cfg_file = write(
        tmp_path / "run.yaml",
        """
        name: demo
        budget: {max_tokens: 4096, tokens_per_frame: 64}
        data: {batch_size: 4, eval_batch_size: "${data.batch_size}"}
        model:
          compressor: {name: pool}
        """,
    )
    cfg = load_config(cfg_file, ["budget.max_tokens=1024", "data.batch_size=2"])
    assert cfg.budget.max_tokens == 1024
    assert cfg.data.eval_batch_size == 2  # interpolation sees the override
    origins = origins_of(cfg)
    assert origins["budget.tokens_per_frame"] == str(cfg_file)
    assert origins["budget.max_tokens"] == "the command line"
    assert "max_tokens: 1024" in to_yaml(cfg)


def test_base_chain_and_origins(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "base.yaml", "seed: 1\nbudget: {max_tokens: 100, fps: 2.0}\n")
    child = write(tmp_path / "sub" / "child.yaml", "base: ../base.yaml\nbudget: {max_tokens: 200}\n")
    cfg = load_config(child)
    assert cfg.seed == 1 and cfg.budget.max_tokens == 200 and cfg.budget.fps == 2.0
    assert "base" not in cfg
    assert origins_of(cfg)["budget.fps"].endswith("base.yaml")
    assert origins_of(cfg)["budget.max_tokens"].endswith("child.yaml")


def test_base_loop_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.yaml")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_top_level_key_names_key_file_and_valid_keys(tmp_path):
    f = write(tmp_path / "x.yaml", "budgett: {max_tokens: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    msg = str(err.value)
    assert "budgett" in msg and str(f) in msg and "budget" in msg and "trainer" in msg


def test_unknown_section_key(tmp_path):
    f = write(tmp_path / "x.yaml", "budget: {max_tokenz: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    msg = str(err.value)
    assert "budget.max_tokenz" in msg and "max_tokens" in msg and "min_tokens_per_frame" in msg and str(f) in msg


def test_bad_type_names_key_expected_type_and_file(tmp_path):
    f = write(tmp_path / "x.yaml", "budget: {max_tokens: lots}\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    msg = str(err.value)
    assert "budget.max_tokens" in msg and "expected int" in msg and "'lots'" in msg and str(f) in msg


def test_bad_literal_lists_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"data.on_error: expected Literal\['skip', 'raise'\]"):
        load_config(None, ["data.on_error=ignore"])


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="budget.max_tokens: expected int, got bool"):
        load_config(None, ["budget.max_tokens=true"])


def test_unknown_plugin_lists_installed(tmp_path):
    f = write(tmp_path / "x.yaml", "model:\n  compressor: {name: poool}\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    msg = str(err.value)
    assert "model.compressor.name" in msg and "poool" in msg and "pool" in msg and str(f) in msg


def test_unknown_component_kwarg_names_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.compressor.name=pool", "model.compressor.stride=2"])
    msg = str(err.value)
    assert "model.compressor.stride" in msg and "valid keys: name" in msg and "the command line" in msg


def test_component_kwarg_type_is_checked():
    registry = dynvlm.Registry()

    class Sized(dynvlm.Compressor):
        def __init__(self, dim: int, ratio: float = 0.5, mode: str = "a") -> None:
            super().__init__(dim)

    import types

    mod = types.ModuleType("sized_plugin")
    mod.register_compressors = dynvlm.hookimpl(lambda register: register("sized", Sized))
    registry.add_plugin(mod, distribution="test")
    load_config(None, ["model.compressor.name=sized", "model.compressor.ratio=1"], registry=registry)  # int ok as float
    with pytest.raises(ConfigError, match="model.compressor.ratio: expected float, got str"):
        load_config(None, ["model.compressor.name=sized", "model.compressor.ratio=half"], registry=registry)
    with pytest.raises(ConfigError, match="valid keys: name, mode, ratio"):
        load_config(None, ["model.compressor.name=sized", "model.compressor.dim=3"], registry=registry)


def test_component_spec_needs_a_name():
    with pytest.raises(ConfigError, match="'name' key naming a registered compressor; installed: .*pool"):
        load_config(None, ["model.compressor.backend=torch"])


def test_unknown_model_key():
    with pytest.raises(ConfigError, match="model.decoder: unknown key 'decoder'; valid keys of model: compressor, compressor_at, encoder, llm, projector, prompt"):
        load_config(None, ["model.decoder.name=x"])


def test_trainer_keys_are_lightning_trainer_arguments():
    cfg = load_config(None, ["trainer.max_steps=3", "trainer.accelerator=cpu"])
    assert cfg.trainer.max_steps == 3
    with pytest.raises(ConfigError) as err:
        load_config(None, ["trainer.max_stepz=3"])
    assert "trainer.max_stepz" in str(err.value) and "max_steps" in str(err.value)


def test_sweep_points_are_validated(tmp_path):
    f = write(
        tmp_path / "s.yaml",
        """
        model: {compressor: {name: pool}}
        sweep:
          budget.tokens_per_frame: [4, 16]
          model.compressor.name: [pool]
        """,
    )
    cfg = load_config(f)
    points = sweep_points(cfg.sweep)
    assert points == [
        {"budget.tokens_per_frame": 4, "model.compressor.name": "pool"},
        {"budget.tokens_per_frame": 16, "model.compressor.name": "pool"},
    ]
    assert apply_point({"budget": {"fps": 1.0}}, points[1]) == {
        "budget": {"fps": 1.0, "tokens_per_frame": 16},
        "model": {"compressor": {"name": "pool"}},
    }
    bad = write(tmp_path / "bad.yaml", "sweep:\n  model.compressor.name: [pool, nosuch]\n")
    with pytest.raises(ConfigError, match="nosuch"):
        load_config(bad)
    empty = write(tmp_path / "empty.yaml", "sweep:\n  budget.fps: []\n")
    with pytest.raises(ConfigError, match="sweep.budget.fps: expected a non-empty list"):
        load_config(empty)


def test_a_sweep_can_join_several_grids(tmp_path):
    f = write(
        tmp_path / "s.yaml",
        """
        model: {compressor: {name: pool}}
        sweep:
          - {model.compressor.name: [pool, tome], budget.tokens_per_frame: [4, 16]}
          - {model.compressor.name: [identity, pool], budget.tokens_per_frame: [16], seed: [1]}
          - {model.compressor.name: [pool], budget.tokens_per_frame: [4]}
        """,
    )
    cfg = load_config(f)
    points = sweep_points(cfg.sweep)
    assert [tuple(p.values()) for p in points] == [
        ("pool", 4), ("pool", 16), ("tome", 4), ("tome", 16), ("identity", 16, 1), ("pool", 16, 1),
    ]  # the third grid's only point is the first grid's first: kept once
    assert sweep_keys(cfg.sweep) == ["model.compressor.name", "budget.tokens_per_frame", "seed"]
    bad = write(tmp_path / "bad.yaml", "sweep:\n  - {model.compressor.name: [pool]}\n  - {budget.fps: [1.0, nosuch]}\n")
    with pytest.raises(ConfigError, match="budget.fps"):
        load_config(bad)
    empty = write(tmp_path / "empty.yaml", "sweep:\n  - {model.compressor.name: [pool]}\n  - {budget.fps: []}\n")
    with pytest.raises(ConfigError, match=r"sweep\[1\].budget.fps: expected a non-empty list"):
        load_config(empty)


def test_malformed_override_and_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(None, ["budget.max_tokens"])
    f = write(tmp_path / "broken.yaml", "budget: {max_tokens: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(f)
    g = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at top level"):
        load_config(g)


def test_bad_interpolation_names_the_file(tmp_path):
    f = write(tmp_path / "x.yaml", "data: {batch_size: '${nowhere.at_all}'}\n")
    with pytest.raises(ConfigError, match=r"cannot resolve interpolation in .*x\.yaml"):
        load_config(f)


def test_build_component_rejects_unknown_kwargs():
    with pytest.raises(ConfigError, match="unknown key 'blah' for compressor 'pool'"):
        dynvlm.build_component("compressor", {"name": "pool", "blah": 1}, dim=4)


def test_here_is_the_folder_of_the_file_that_writes_it(tmp_path):
    (tmp_path / "recipes").mkdir()
    write(tmp_path / "recipes" / "base.yaml", "data: {train: '${here}/train.jsonl'}\n")
    child = write(tmp_path / "child.yaml", "base: recipes/base.yaml\ndata: {test: '${here}/test.jsonl'}\n")
    cfg = load_config(child)
    assert cfg.data.train == str((tmp_path / "recipes" / "train.jsonl").resolve())
    assert cfg.data.test == str((tmp_path / "test.jsonl").resolve())


def test_config_reference_documents_every_key():
    """docs/config.md names every field of every section, so the reference matches the code."""
    import dataclasses
    from pathlib import Path

    from dynvlm import schema

    doc = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    sections = {**schema.SECTIONS, "model.projector": schema.ProjectorConfig}
    missing = [
        f"{section}.{f.name}"
        for section, cls in sections.items()
        for f in dataclasses.fields(cls)
        if f"`{section}.{f.name}`" not in doc
    ]
    missing += [f"top-level {key}" for key in ("name", "seed", "output_dir", "base", "sweep") if f"`{key}`" not in doc]
    assert not missing, f"docs/config.md does not document: {missing}"


def test_budget_policy_is_checked_when_the_config_loads(tmp_path):
    ok = write(tmp_path / "ok.yaml", "budget: {policy: {name: frames, frames: 8}}\n")
    assert load_config(ok).budget.policy.frames == 8
    for text, match in [
        ("budget: {policy: nosuch}\n", r"budget\.policy\.name.*nosuch.*dynamic"),
        ("budget: {policy: {name: frames, frame: 8}}\n", r"budget\.policy\.frame: unknown key 'frame'.*valid keys: name, frames"),
        ("budget: {policy: {name: frames, frames: eight}}\n", r"budget\.policy\.frames: expected"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(write(tmp_path / "bad.yaml", text))
