"""dynvlm.util: tables and CSV, labels, paths, peak memory and per-part meters."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from dynvlm.util.configs import config_dict
from dynvlm.util.labels import setting_label
from dynvlm.util.memory import measure_peak, peak_bytes, proc_status_bytes, reset_peak
from dynvlm.util.paths import last_checkpoint, run_dir, shown, test_file
from dynvlm.util.tables import format_table, read_csv_rows, write_csv_rows
from dynvlm.util.timing import PartMeter


def test_format_table_aligns_columns():
    text = format_table(("kind", "name"), [("compressor", "pool"), ("llm", "hf")])
    lines = text.splitlines()
    assert lines[0] == "kind        name"
    assert lines[1] == "----------  ----"
    assert lines[3] == "llm         hf"


def test_csv_rows_round_trip_with_columns_in_first_seen_order(tmp_path):
    path = tmp_path / "results.csv"
    assert read_csv_rows(path) == []
    write_csv_rows(path, [{"a": 1, "b": 2}, {"a": 3, "c": 4}])
    assert path.read_text().splitlines()[0] == "a,b,c"
    assert read_csv_rows(path) == [{"a": "1", "b": "2", "c": ""}, {"a": "3", "b": "", "c": "4"}]
    assert not list(tmp_path.glob(".results.csv.*"))  # the temp file was renamed, not left behind


def test_config_dict_resolves_interpolations():
    from omegaconf import OmegaConf

    assert config_dict(OmegaConf.create({"a": 2, "b": "${a}"})) == {"a": 2, "b": 2}
    assert config_dict({"x": {"y": [1]}}) == {"x": {"y": [1]}}


@pytest.mark.parametrize(("args", "label"), [
    (("tome", "fixed", "36"), "tome@36 (fixed)"),
    (("pool", "dynamic", "dynamic"), "pool@dynamic"),
    (("pool", "frames", None, {"lr": 0.001}), "pool (frames) lr=0.001"),
    (("pool",), "pool"),
])
def test_setting_label(args, label):
    assert setting_label(*args) == label


def test_run_paths(tmp_path):
    cfg = {"output_dir": str(tmp_path), "name": "exp"}
    assert run_dir(cfg) == tmp_path / "exp"
    assert last_checkpoint(cfg) == tmp_path / "exp" / "checkpoints" / "last.ckpt"
    assert run_dir({}) == Path("runs") / "run"
    assert test_file({"data": {"test": "t.jsonl", "synth": {"out": "x"}}}) == Path("t.jsonl")
    assert test_file({"data": {"synth": {"out": str(tmp_path)}}}) == tmp_path / "test_mc.jsonl"
    assert test_file({"data": {"synth": {"out": str(tmp_path), "test": 0}}}) is None
    assert shown(Path.cwd() / "a" / "b") == str(Path("a") / "b")


def test_peak_memory_sees_a_large_allocation():
    if proc_status_bytes("VmHWM") is None:
        pytest.skip("no /proc/self/status on this platform")
    assert reset_peak("cpu")
    held = []
    peak, delta, source = measure_peak(lambda: held.append(torch.ones(64 * 2**20 // 4)), "cpu")  # 64 MiB
    assert "VmHWM" in source and delta >= 48 * 2**20 and peak >= delta
    assert peak_bytes("cpu")[0] >= peak - 2**20


def test_part_meter_accumulates_per_part_and_tracks_the_active_part():
    class Slow(nn.Module):
        def __init__(self, seconds: float) -> None:
            super().__init__()
            self.seconds = seconds

        def forward(self, x):
            seen.append(list(meter.active))
            time.sleep(self.seconds)
            return x

    seen: list[list[str]] = []
    a, b = Slow(0.02), Slow(0.0)
    with PartMeter({"a": a, "b": b}, time.perf_counter) as meter:
        a(1)
        a(1)
        b(1)
    assert meter.totals["a"] >= 0.04 and meter.totals["b"] < meter.totals["a"]
    assert seen == [["a"], ["a"], ["b"]] and meter.active == []
    before = dict(meter.totals)
    a(1)  # hooks removed on exit: nothing more is counted
    assert len(seen) == 4 and meter.totals == before
