"""Config fingerprints: which keys of a resolved run config can change its results, and a digest of them.

A run folder or a sweep row records the fingerprint of the config that made it; a re-run or a resume
with another fingerprint would mix old and new numbers, so the callers refuse it and name the keys
that changed (:func:`changed_keys`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: keys that cannot change a result: where files go, what the console and loggers show, how many
#: processes decode data; a key and everything under it
NOT_RESULT_KEYS = (
    "output_dir", "name", "sweep",
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.logger", "trainer.log_every_n_steps",
    "trainer.default_root_dir", "data.num_workers", "data.synth.workers", "data.cache",
)
#: the file a run folder keeps its fingerprint in
FINGERPRINT_FILE = "fingerprint.json"


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, Mapping) and node:
        for key, value in node.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = node


def result_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as dotted key -> value, leaving out :data:`NOT_RESULT_KEYS` (a key and its subtree)."""
    flat: dict[str, Any] = {}
    _flatten(config, "", flat)
    return {k: v for k, v in sorted(flat.items())
            if not any(k == skip or k.startswith(skip + ".") for skip in NOT_RESULT_KEYS)}


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """A 16-hex-digit digest of :func:`result_keys` (stable across processes and key order)."""
    text = json.dumps(result_keys(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every result key whose value differs between two configs (a missing
    key shows as ``<unset>``)."""
    a, b = result_keys(old), result_keys(new)
    unset = "<unset>"
    return [f"{k}: {a.get(k, unset)!r} -> {b.get(k, unset)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def write_fingerprint(folder: Path, config: Mapping[str, Any]) -> str:
    """Write ``folder/fingerprint.json`` (the digest and the result keys it covers); return the digest."""
    digest = config_fingerprint(config)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"fingerprint": digest, "config": result_keys(config)}
    (folder / FINGERPRINT_FILE).write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    return digest


def read_fingerprint(folder: Path) -> tuple[str, dict[str, Any]] | None:
    """``(digest, result keys)`` recorded in ``folder``, or ``None`` when it has none."""
    path = folder / FINGERPRINT_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return str(record["fingerprint"]), dict(record["config"])
