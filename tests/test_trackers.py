"""trainer.logger: the trackers researchers use, each when installed, with the run's name and config
fingerprint as tags; a missing package is named."""

from __future__ import annotations

import importlib.util

import pytest
import yaml
from omegaconf import OmegaConf
from tiny_vlm import ENCODER, LLM, WORDS

from dynvlm.config import ConfigError
from dynvlm.run import train
from dynvlm.util.fingerprint import config_fingerprint


def config(tmp_path, logger):
    return OmegaConf.create({
        "name": "tracked", "output_dir": str(tmp_path / "runs"),
        "model": {"encoder": {"name": "clip", "config": dict(ENCODER)}, "compressor": {"name": "pool"},
                  "llm": {"name": "hf", "config": dict(LLM), "vocabulary": list(WORDS)}},
        "budget": {"max_tokens": 16, "max_frames": 4},
        "trainer": {"accelerator": "cpu", "max_steps": 1, "logger": logger},
    })


def test_csv_and_tensorboard_together_log_the_run_with_its_fingerprint(tmp_path):
    from tiny_vlm import ListDataModule, colour_samples

    cfg = config(tmp_path, ["csv", "tensorboard"])
    data = ListDataModule(colour_samples(tmp_path / "videos", 2))
    train.fit(cfg, datamodule=data)
    run = tmp_path / "runs" / "tracked"
    hparams = yaml.safe_load(next((run / "logs").glob("version_*/hparams.yaml")).read_text())
    fingerprint = config_fingerprint(OmegaConf.to_container(cfg, resolve=True))
    assert hparams["fingerprint"] == fingerprint and hparams["run"] == "tracked"
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert (run / "fingerprint.json").is_file()


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_a_tracker_is_built_when_installed_and_named_when_not(tmp_path, name):
    cfg = config(tmp_path, name)
    if importlib.util.find_spec(name) is None:
        with pytest.raises(ConfigError, match=rf"needs the {name} package.*pip install {name}"):
            train.make_trainer(cfg, fit=True)
    else:
        trainer = train.make_trainer(cfg, fit=True)
        assert [train.name_of(lg) for lg in trainer.loggers] == [name]


def test_an_unknown_tracker_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown tracker 'neptune'; valid: csv, tensorboard, wandb, mlflow"):
        train.make_trainer(config(tmp_path, "neptune"), fit=True)
    assert train.make_trainer(config(tmp_path, False), fit=True).loggers == []
