"""`dynvlm compare`: two results files agree except for the columns the clock and the allocator measure,
and every difference is named by point, column and values."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynvlm.cli.main import main as cli
from dynvlm.config import ConfigError
from dynvlm.run.compare import compare_results
from dynvlm.run.sweep import MEASURED_COLUMNS
from dynvlm.util.tables import write_csv_rows

ROWS = [
    {"point": "tokens_per_frame=1", "accuracy": "0.5", "fingerprint": "aa", "step_time_s": "0.08", "prefill_ms": "4.1"},
    {"point": "tokens_per_frame=4", "accuracy": "0.625", "fingerprint": "bb", "step_time_s": "0.07", "prefill_ms": "3.9"},
    {"point": "tokens_per_frame=16", "accuracy": "0.75", "fingerprint": "cc", "step_time_s": "0.09", "prefill_ms": "4.0"},
]


def _write(folder: Path, rows: list[dict[str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_csv_rows(folder / "results.csv", rows)
    return folder / "results.csv"


def test_measured_columns_are_left_out_and_everything_else_must_match(tmp_path):
    first = _write(tmp_path / "a", ROWS)
    retimed = [{**r, "step_time_s": "1.5", "prefill_ms": "9.9"} for r in ROWS]
    second = _write(tmp_path / "b", retimed)
    assert {"step_time_s", "prefill_ms"} <= set(MEASURED_COLUMNS)
    assert compare_results(first, second).same
    measured_too = compare_results(first, second, ignore=())
    assert not measured_too.same
    assert {(p, c) for p, c, _, _ in measured_too.values} == {(r["point"], c) for r in ROWS for c in ("step_time_s", "prefill_ms")}


def test_every_difference_is_named(tmp_path):
    first = _write(tmp_path / "a", ROWS)
    changed = [dict(r) for r in ROWS[:2]] + [{"point": "tokens_per_frame=64", "accuracy": "0.7", "fingerprint": "dd",
                                              "step_time_s": "0.1", "prefill_ms": "4.0"}]
    changed[1]["accuracy"] = "0.5"
    for r in changed:
        r["extra"] = "1"
    diff = compare_results(first, _write(tmp_path / "b", changed))
    assert not diff.same
    assert diff.only_first == ["tokens_per_frame=16"] and diff.only_second == ["tokens_per_frame=64"]
    assert diff.columns_only_second == ["extra"] and diff.columns_only_first == []
    assert diff.values == [("tokens_per_frame=4", "accuracy", "0.625", "0.5")]
    assert not diff.order_differs
    reordered = compare_results(first, _write(tmp_path / "c", ROWS[::-1]))
    assert reordered.order_differs and not reordered.values and not reordered.same


def test_cli_exit_codes_and_messages(tmp_path, capsys):
    _write(tmp_path / "a", ROWS)
    _write(tmp_path / "b", [{**r, "fit_s": "3"} if i else {**r, "accuracy": "0.25"} for i, r in enumerate(ROWS)])
    _write(tmp_path / "c", ROWS)
    assert cli(["compare", str(tmp_path / "a"), str(tmp_path / "c" / "results.csv")]) == 0
    assert "same results: 3 points" in capsys.readouterr().out
    assert cli(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    out = capsys.readouterr().out
    assert "tokens_per_frame=1: accuracy = '0.5'" in out and "'0.25'" in out
    assert cli(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--ignore", "accuracy"]) == 0
    capsys.readouterr()
    assert cli(["compare", str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
    assert "missing: no such results file" in capsys.readouterr().err


def test_a_file_without_points_is_refused(tmp_path):
    other = tmp_path / "other.csv"
    write_csv_rows(other, [{"accuracy": "0.5"}])
    with pytest.raises(ConfigError, match="no 'point' column"):
        compare_results(_write(tmp_path / "a", ROWS), other)
