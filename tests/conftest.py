"""Test-wide setup. Environment variables first: Triton reads TRITON_INTERPRET when kernels are
decorated, and transformers reads HF_HUB_OFFLINE when imported."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# tests/ helpers (plugin_factory, ...) import by plain name
sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Path:
    """A tiny synthetic dataset shared by the checkpoint and evaluation tests (read only): 2 training clips
    and 2 test clips of 12-14 s with balls (the default question types)."""
    from dynvlm.data.synth import generate

    out = tmp_path_factory.mktemp("synth") / "synth"
    generate({"out": str(out), "seed": 3, "train": 2, "val": 0, "test": 2, "size": 16, "min_duration": 12,
              "max_duration": 14, "max_visits": 2, "max_visit_seconds": 3}, progress=False)
    return out
