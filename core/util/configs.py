"""A run config as a plain, resolved ``dict``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf


def config_dict(config: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A resolved, plain-``dict`` copy of a run config (an omegaconf tree or a mapping)."""
    if isinstance(config, DictConfig):
        out = OmegaConf.to_container(config, resolve=True)
    else:
        out = OmegaConf.to_container(OmegaConf.create(dict(config)), resolve=True)
    assert isinstance(out, dict)
    return out
