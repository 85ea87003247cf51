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
