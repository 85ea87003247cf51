"""A sweep spread over a cluster: ``dynvlm run SWEEP --shard i/n`` and ``dynvlm run SWEEP --merge``.

Shard ``i`` of ``n`` (``0 <= i < n``) runs the points ``i, i + n, i + 2n, ...`` of the sweep, in file order,
and writes their rows to its own file ``results.shard-<i>-of-<n>.csv`` beside ``results.csv`` (atomically,
after each point), so concurrent shards never write the same file. Guards against running a point twice:

- a shard holds a lock on ``.shard-<i>-of-<n>.lock`` while it runs: the same shard started twice is refused;
- each point is claimed with a lock on ``points/<slug>.lock`` while it runs: a point another process is running
  (say, a shard of another ``n``) is skipped, and a point whose row is already in ``results.csv`` or in the
  shard's file is not run again;
- the synthetic data a sweep generates is prepared by one shard at a time (``.prepare.lock``).

Locks are ``flock`` locks (released when a process dies; they work on local disks and on most cluster file
systems). A point's row is refused, as in a single run, when its config changed since it ran
(``--rerun-changed`` runs it again).

Merging (``--merge``, and automatically by the shard that finds every point done) reads ``results.csv`` and
every shard file, keeps one row per point (a shard's row over an older ``results.csv`` one), in the sweep's
point order, and writes ``results.csv``, ``results.md`` and the plots under ``.merge.lock``: the same
``results.csv`` a single ``dynvlm run`` writes (rows in point order; timings are measured, so they differ).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dynvlm.config import ConfigError, sweep_keys
from dynvlm.run.sweep import _drop_stale_rows, point_slug, run_points, sweep_setup, write_summary
from dynvlm.util.paths import RESULTS_CSV, shown
from dynvlm.util.tables import read_csv_rows, write_csv_rows

SHARD_FILES = "results.shard-*-of-*.csv"


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; a :class:`ConfigError` otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ConfigError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. --shard 0/4 (SLURM: "
                          "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-3)")
    return int(m.group(1)), int(m.group(2))


def shard_path(out: Path, i: int, n: int) -> Path:
    """The rows file of shard ``i`` of ``n``."""
    return out / f"results.shard-{i}-of-{n}.csv"


@contextlib.contextmanager
def file_lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` (created if absent); yields ``False`` when ``wait`` is off and another
    process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _prepare_data(out: Path, configs: Sequence[Mapping[str, Any]]) -> None:
    """Generate each distinct ``data.synth`` dataset of ``configs``, one process at a time."""
    from dynvlm.run.train import make_datamodule

    with file_lock(out / ".prepare.lock"):
        seen: list[Any] = []
        for cfg in configs:
            synth = (cfg.get("data") or {}).get("synth")
            if synth and synth not in seen:
                seen.append(synth)
                make_datamodule(cfg).prepare_data()


def run_shard(data: Mapping[str, Any], shard: tuple[int, int], callbacks: Sequence[Any] = (),
              rerun_changed: bool = False) -> dict[str, Any]:
    """Run shard ``(i, n)`` of the sweep ``data`` (see the module docstring); merge when every point is done."""
    i, n = shard
    out, points, configs = sweep_setup(data)
    mine = points[i::n]
    slugs = {point_slug(p) for p in mine}
    path = shard_path(out, i, n)
    with file_lock(out / f".shard-{i}-of-{n}.lock", wait=False) as alone:
        if not alone:
            raise ConfigError(f"shard {i}/{n} of {shown(out)} is already running in another process")
        # rows of this shard's points already in results.csv (a single run, an earlier merge), then its own file
        rows = {r["point"]: r for r in read_csv_rows(out / RESULTS_CSV) if r["point"] in slugs}
        rows.update({r["point"]: r for r in read_csv_rows(path) if r["point"] in slugs})
        kept = _drop_stale_rows(out, list(rows.values()), configs, rerun_changed, csv_path=path)
        done = {r["point"] for r in kept}
        todo = [p for p in mine if point_slug(p) not in done]
        _prepare_data(out, [configs[point_slug(p)] for p in todo])

        def claim(slug: str) -> Any:
            return file_lock(out / "points" / f"{slug}.lock", wait=False)

        ran = run_points(todo, configs, kept, path, f"shard {i}/{n} of {out.name}", len(mine), callbacks,
                         rerun_changed, claim=claim)
    result: dict[str, Any] = {"shard": f"{i}/{n}", "results": str(path), "points": len(mine), "ran": ran}
    if not missing_points(out, points):
        result["merged"] = merge(data)
    return result


def _all_rows(out: Path) -> dict[str, dict[str, Any]]:
    """One row per point from ``results.csv`` then the shard files (a later file's row wins)."""
    rows = {r["point"]: r for r in read_csv_rows(out / RESULTS_CSV)}
    for file in sorted(out.glob(SHARD_FILES)):
        rows.update({r["point"]: r for r in read_csv_rows(file)})
    return rows


def missing_points(out: Path, points: Sequence[Mapping[str, Any]]) -> list[str]:
    """Slugs of ``points`` with a row in neither ``results.csv`` nor a shard file."""
    rows = _all_rows(out)
    return [point_slug(p) for p in points if point_slug(p) not in rows]


def merge(data: Mapping[str, Any]) -> dict[str, Any]:
    """Combine ``results.csv`` and the shard files into ``results.csv`` (the sweep's point order), ``results.md``
    and the plots. A row made with another config than the sweep's now is refused, naming the point."""
    from dynvlm.run.train import StaleRunError
    from dynvlm.util.fingerprint import config_fingerprint

    out, points, configs = sweep_setup(data)
    with file_lock(out / ".merge.lock"):
        rows = _all_rows(out)
        ordered = [rows[point_slug(p)] for p in points if point_slug(p) in rows]
        stale = [r["point"] for r in ordered if r.get("fingerprint") != config_fingerprint(configs[r["point"]])]
        if stale:
            raise StaleRunError(f"{shown(out)}: {len(stale)} point(s) were run with another config than the sweep's now "
                                f"({', '.join(stale[:4])}{', ...' if len(stale) > 4 else ''}); run their shards again "
                                "with --rerun-changed before merging")
        write_csv_rows(out / RESULTS_CSV, ordered)
        summary = write_summary(out, ordered, sweep_keys(data["sweep"]))
    missing = [point_slug(p) for p in points if point_slug(p) not in rows]
    return {"results": str(out / RESULTS_CSV), "points": len(points), "merged": len(ordered), "missing": missing,
            **summary}
