"""``dynvlm bench kernels`` (dynvlm.kernels.bench.main): the table, its budgets and argument errors."""

import io

import pytest

from dynvlm.kernels import bench


def test_quick_run_prints_the_table(capsys):
    assert bench.main(["--quick", "--ops", "pool", "prune", "plan"]) == 0
    out = capsys.readouterr().out
    assert "| op | dtype | F×N×C → tokens | naive | torch | compile(naive) | triton |" in out
    rows = [line for line in out.splitlines() if line.startswith(("| pool", "| prune", "| plan"))]
    assert len(rows) == 3
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == "2×64×96 → 16"
        assert cells[6] == "n/a (no GPU)"  # no CUDA here
        assert cells[5] == "skipped (compile budget)"  # --quick does not pay inductor's start-up
        float(cells[3].split()[0]), float(cells[4].split()[0])  # both eager paths were timed
    assert "copy bandwidth" in out and "total" in out


def test_time_budget_skips_rows_it_cannot_afford():
    out = io.StringIO()
    rows = bench.run(("pool",), ((1, 16, 8, 4),), ("fp32",), "cpu", 0.0, 0.01, 0.0, out=out)
    assert rows[0]["skipped"].startswith("skipped (time budget")
    assert "skipped (time budget" in out.getvalue()


def test_floor_bytes():
    # pool reads X and writes s*s rows; ToMe reads X twice; prune moves scores, noise and kept rows
    assert bench.floor_bytes("pool", 2, 16, 8, 9, 4) == 2 * 16 * 8 * 4 + 2 * 9 * 8 * 4
    assert bench.floor_bytes("tome", 2, 16, 8, 9, 4) == 2 * (2 * 16 * 8 * 4) + 2 * 9 * 8 * 4
    assert bench.floor_bytes("prune", 2, 16, 8, 9, 2) == 2 * 2 * 16 * 4 + 2 * 2 * 9 * 8 * 2
    # plan (r = 7 merges, 9 slots, 8 A tokens): scores + matches, sizes + sums in; the RoundPlan out
    assert bench.floor_bytes("plan", 2, 16, 8, 9, 2) == 2 * ((4 + 8) * 8 + 8 * 16 + (3 * 8 + 2 * 4) * 9 + 8 * 16 + 3 * 8 * 7)


@pytest.mark.parametrize("bad", ["8,576,1024", "8,500,1024,100", "8,576,1024,999"])
def test_bad_sizes_are_rejected(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--size", bad])
    assert exc.value.code == 2
    assert "size" in capsys.readouterr().err
