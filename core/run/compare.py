"""Two results files compared point by point: ``dynvlm compare A B``.

A sweep run twice with the same config (sharded or not, on one machine) must give the same ``results.csv``
except for the columns the clock and the allocator measure (:data:`dynvlm.run.sweep.MEASURED_COLUMNS`). This
module says whether it did, and names every point, column and pair of values where it did not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dynvlm.config import ConfigError
from dynvlm.run.sweep import MEASURED_COLUMNS
from dynvlm.util.paths import RESULTS_CSV, shown
from dynvlm.util.tables import read_csv_rows


@dataclass
class ResultsDiff:
    """What differs between two results files.

    Attributes:
        points: how many points the first file has.
        only_first / only_second: points (the ``point`` column) in one file only.
        order_differs: both files hold the same points, in another order.
        columns_only_first / columns_only_second: columns in one file only (ignored columns aside).
        values: ``(point, column, first value, second value)`` for every cell that differs.
    """

    points: int = 0
    only_first: list[str] = field(default_factory=list)
    only_second: list[str] = field(default_factory=list)
    order_differs: bool = False
    columns_only_first: list[str] = field(default_factory=list)
    columns_only_second: list[str] = field(default_factory=list)
    values: list[tuple[str, str, str, str]] = field(default_factory=list)

    @property
    def same(self) -> bool:
        """True when nothing differs."""
        return not (self.only_first or self.only_second or self.order_differs or self.columns_only_first
                    or self.columns_only_second or self.values)

    def lines(self, first: str = "first", second: str = "second", limit: int = 20) -> list[str]:
        """The differences as sentences, at most ``limit`` differing cells spelled out."""
        out = [f"points only in {first}: {', '.join(self.only_first)}"] if self.only_first else []
        out += [f"points only in {second}: {', '.join(self.only_second)}"] if self.only_second else []
        out += ["the same points in another order"] if self.order_differs else []
        out += [f"columns only in {first}: {', '.join(self.columns_only_first)}"] if self.columns_only_first else []
        out += [f"columns only in {second}: {', '.join(self.columns_only_second)}"] if self.columns_only_second else []
        for point, column, a, b in self.values[:limit]:
            out.append(f"{point}: {column} = {a!r} in {first}, {b!r} in {second}")
        if len(self.values) > limit:
            out.append(f"... and {len(self.values) - limit} more differing values")
        return out


def results_path(path: str | Path) -> Path:
    """``path`` itself when it is a file, else ``path/results.csv``; a :class:`ConfigError` naming it if absent."""
    p = Path(path)
    p = p / RESULTS_CSV if p.is_dir() else p
    if not p.is_file():
        raise ConfigError(f"{shown(p)}: no such results file (give a results.csv or the sweep's run folder)")
    return p


def compare_results(first: Path, second: Path, ignore: Iterable[str] = MEASURED_COLUMNS) -> ResultsDiff:
    """Compare two results CSV files row by row, matched on their ``point`` column.

    Cells are compared as the text in the files (exact: the same config on the same machine writes the same
    digits). Columns in ``ignore`` are left out. Returns a :class:`ResultsDiff`.
    """
    rows_a, rows_b = read_csv_rows(first), read_csv_rows(second)
    for path, rows in ((first, rows_a), (second, rows_b)):
        if rows and "point" not in rows[0]:
            raise ConfigError(f"{shown(path)}: no 'point' column (is it a sweep's results.csv?)")
    skip = set(ignore)
    by_b = {r["point"]: r for r in rows_b}
    points_a, points_b = [r["point"] for r in rows_a], [r["point"] for r in rows_b]
    in_a = set(points_a)
    cols_a = [c for c in (rows_a[0] if rows_a else {}) if c not in skip]
    cols_b = [c for c in (rows_b[0] if rows_b else {}) if c not in skip]
    diff = ResultsDiff(
        points=len(rows_a),
        only_first=[p for p in points_a if p not in by_b],
        only_second=[p for p in points_b if p not in in_a],
        columns_only_first=[c for c in cols_a if c not in cols_b],
        columns_only_second=[c for c in cols_b if c not in cols_a],
    )
    diff.order_differs = not diff.only_first and not diff.only_second and points_a != points_b
    for row in rows_a:
        other = by_b.get(row["point"])
        if other is None:
            continue
        for column in cols_a:
            if column in other and row[column] != other[column]:
                diff.values.append((row["point"], column, row[column], other[column]))
    return diff


def compare_cli(first: str | Path, second: str | Path, ignore: Sequence[str] = (), all_columns: bool = False) -> int:
    """``dynvlm compare FIRST SECOND``: print whether two results files agree (the measured columns left out
    unless ``all_columns``, and ``ignore`` too); return 0 when they do, 1 when they differ."""
    first, second = results_path(first), results_path(second)
    skipped = [*([] if all_columns else MEASURED_COLUMNS), *ignore]
    diff = compare_results(first, second, skipped)
    a, b = shown(first), shown(second)
    if diff.same:
        print(f"same results: {diff.points} points, every column but {', '.join(skipped) or 'none'} equal "
              f"({a} and {b})")
        return 0
    print(f"results differ ({a} against {b}):")
    for line in diff.lines(a, b):
        print(f"  {line}")
    return 1
