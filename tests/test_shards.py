"""Sweeps across processes: two shards run at once write their own files, the last one merges, and the
merged results.csv has the rows a single run writes (timings aside)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_sweep import sweep_file

from dynvlm.config import ConfigError, load_config
from dynvlm.run.compare import compare_results
from dynvlm.run.shards import file_lock, merge, parse_shard, run_shard
from dynvlm.run.sweep import run
from dynvlm.util.configs import config_dict
from dynvlm.util.tables import read_csv_rows


def _shard(path: Path, shard: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dynvlm", "run", str(path), "--shard", shard], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_shards_at_once_give_the_results_of_one_run(tmp_path):
    path = sweep_file(tmp_path)
    run(load_config(path))  # one process
    out = tmp_path / "runs" / "mini"
    expected = read_csv_rows(out / "results.csv")
    out.rename(tmp_path / "single")  # the same config (same fingerprints) runs again, sharded

    procs = [_shard(path, f"{i}/2", tmp_path) for i in (0, 1)]  # at once
    for p in procs:
        _, err = p.communicate(timeout=400)
        assert p.returncode == 0, err[-3000:]
    assert sorted(f.name for f in out.glob("results.shard-*.csv")) == ["results.shard-0-of-2.csv", "results.shard-1-of-2.csv"]
    assert [len(read_csv_rows(out / f"results.shard-{i}-of-2.csv")) for i in (0, 1)] == [1, 1]  # disjoint halves
    merged = read_csv_rows(out / "results.csv")  # written by the shard that finished last
    assert list(merged[0]) == list(expected[0])  # same columns, same order
    assert [r["point"] for r in merged] == [r["point"] for r in expected]  # same points, the sweep's order
    diff = compare_results(tmp_path / "single" / "results.csv", out / "results.csv")  # measured timings aside
    assert diff.same, diff.lines()
    assert (out / "results.md").is_file() and (out / "accuracy_vs_tokens.png").is_file()

    # a shard run again has nothing to do; merging again changes nothing
    data = config_dict(load_config(path))
    assert run_shard(data, (1, 2))["ran"] == 0
    assert merge(data)["merged"] == 2 and read_csv_rows(out / "results.csv") == merged


def test_a_shard_running_elsewhere_is_not_started_twice(tmp_path):
    data = config_dict(load_config(sweep_file(tmp_path)))
    out = tmp_path / "runs" / "mini"
    with file_lock(out / ".shard-0-of-2.lock"):
        with pytest.raises(ConfigError, match="already running"):
            run_shard(data, (0, 2))
    assert merge(data)["missing"] == ["tokens_per_frame=1", "tokens_per_frame=4"]  # nothing ran, nothing invented


@pytest.mark.parametrize("text", ["2/2", "1", "-1/2", "a/b"])
def test_a_bad_shard_is_refused(text):
    with pytest.raises(ConfigError, match="0 <= i < n"):
        parse_shard(text)
