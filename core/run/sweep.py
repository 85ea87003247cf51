"""``dynvlm run`` / ``lightning run``: one config, or the grid of its ``sweep:``.

A sweep file names a base config and a grid of dotted keys::

    base: synthetic.yaml
    sweep:
      model.compressor.name: [pool, tome, prune]
      budget.tokens_per_frame: [4, 16, 64]
      seed: [0, 1]

Each point fits (in ``<output_dir>/<name>/points/<slug>/``), is tested, and appends one row
to ``<output_dir>/<name>/results.csv``. The CSV is rewritten atomically after every point, a
point whose row is already there is skipped on re-run, and an interrupted point resumes from
its ``last.ckpt``. After each fit the point's inference cost is measured on the first
:data:`COST_SAMPLES` test samples with the fitted model (:func:`dynvlm.measure.cost.measure_cost`: FLOPs
per part, prefill latency, KV-cache bytes, peak memory; the ``COST_COLUMNS`` of the row). At the
end ``results.md`` (a compressor x tokens table with the seed spread, and the cost table),
``accuracy_vs_tokens.png`` and ``accuracy_vs_prefill_flops.png`` are written beside it.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from dynvlm.config import apply_point, sweep_keys, sweep_points
from dynvlm.schema import BudgetConfig
from dynvlm.util.fingerprint import changed_keys, config_fingerprint, read_fingerprint
from dynvlm.util.labels import setting_label
from dynvlm.util.memory import peak_bytes, reset_peak
from dynvlm.util.paths import RESULTS_CSV, run_dir, shown, test_file
from dynvlm.util.tables import read_csv_rows, write_csv_rows

FLOPS_PLOT = "accuracy_vs_prefill_flops.png"
COMPRESSOR_KEY = "model.compressor.name"
TOKENS_KEY = "budget.tokens_per_frame"
#: test samples the cost of a point is measured on, and timed prefills per sample (median): about
#: a second per point for the tiny base on CPU
COST_SAMPLES = 2
COST_REPEATS = 3
#: results.csv columns from :func:`dynvlm.measure.cost.measure_cost` (means per test sample; peak = max)
COST_COLUMNS = ("prompt_tokens", "flops_encoder", "flops_compressor", "flops_projector", "flops_llm_prefill",
                "flops_prefill", "prefill_ms", "kv_bytes", "peak_mem_bytes")
#: results.csv columns measured by the clock or the allocator: they differ between any two runs of one config
#: (``dynvlm compare`` leaves them out)
MEASURED_COLUMNS = ("step_time_s", "peak_memory_mb", "fit_s", "test_s", "prefill_ms", "peak_mem_bytes")


def run(cfg: DictConfig | Mapping[str, Any], config_path: str | None = None, callbacks: Sequence[Any] = (),
        rerun_changed: bool = False) -> dict[str, Any]:
    """Fit then test ``cfg``; or, when it has ``sweep:``, every point of its grid (see module doc).

    A run or point made with another config is refused, or with ``rerun_changed`` run again
    (:func:`dynvlm.run.train.check_run_folder`, :func:`run_sweep`).

    On CPU, oneDNN is turned off while it runs: for the small models a CPU sweep trains it is
    slower than torch's own kernels (docs/benchmarks.md, Experiments, has the measurement).
    """
    import torch

    from dynvlm.util.configs import config_dict

    data = config_dict(cfg)
    mkldnn = torch.backends.mkldnn.enabled
    if not torch.cuda.is_available():
        torch.backends.mkldnn.enabled = False
    try:
        if data.get("sweep"):
            return run_sweep(data, callbacks=callbacks, rerun_changed=rerun_changed)
        return run_point(data, callbacks=callbacks, rerun_changed=rerun_changed)
    finally:
        torch.backends.mkldnn.enabled = mkldnn


def run_point(data: Mapping[str, Any], callbacks: Sequence[Any] = (), rerun_changed: bool = False) -> dict[str, Any]:
    """Fit and test one config; returns fit results, test metrics and timing (``rerun_changed``: see
    :func:`dynvlm.run.train.fit`)."""
    from dynvlm.run import train

    stats = RunStats()
    t0 = time.perf_counter()
    fitted = train.fit(OmegaConf.create(dict(data)), callbacks=[stats, *callbacks], rerun_changed=rerun_changed)
    if fitted.get("interrupted"):
        raise KeyboardInterrupt(f"fit of {fitted['run_dir']} was interrupted; re-run to resume from its last checkpoint")
    t1 = time.perf_counter()
    tested = train.test(OmegaConf.create(dict(data)), checkpoint=fitted.get("checkpoint"))
    t2 = time.perf_counter()
    return {**fitted, **tested, **stats.summary(), "fit_s": round(t1 - t0, 2), "test_s": round(t2 - t1, 2)}


def point_slug(point: Mapping[str, Any]) -> str:
    """A folder-safe, stable name for a sweep point, e.g. ``compressor.name=pool,tokens_per_frame=16``."""
    parts = []
    for key, value in point.items():
        short = key.removeprefix("model.").removeprefix("budget.")
        parts.append(f"{short}={value}")
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", ",".join(parts))


def _point_config(base: Mapping[str, Any], name: str, point: Mapping[str, Any]) -> dict[str, Any]:
    """The run config of one sweep point: ``base`` with the point's keys, run in ``<name>/points/<slug>``."""
    data = apply_point(base, point)
    data["name"] = f"{name}/points/{point_slug(point)}"
    return data


def _drop_stale_rows(out: Path, rows: list[dict[str, Any]], configs: Mapping[str, Mapping[str, Any]],
                     rerun_changed: bool, csv_path: Path | None = None) -> list[dict[str, Any]]:
    """``rows`` less those of points whose config changed since they ran (their ``fingerprint`` differs
    from the point's config now, or a row has none), when ``rerun_changed``; their run folders are set
    aside. Without it a changed point is refused, so results.csv never mixes two configs. The kept rows are
    written to ``csv_path`` (default ``<out>/results.csv``).

    Raises:
        StaleRunError: naming the changed points and keys.
    """
    from dynvlm.run.train import StaleRunError, set_aside

    stale = [r for r in rows if r["point"] in configs and r.get("fingerprint") != config_fingerprint(configs[r["point"]])]
    if not stale:
        return rows
    if not rerun_changed:
        lines = []
        for r in stale[:5]:
            recorded = read_fingerprint(run_dir(configs[r["point"]]))
            what = "; ".join(changed_keys(recorded[1], configs[r["point"]])[:4]) if recorded else "no fingerprint recorded"
            lines.append(f"  {r['point']}: {what}")
        raise StaleRunError(
            f"{shown(out / RESULTS_CSV)} holds {len(stale)} point(s) run with another config than the sweep's now:\n"
            + "\n".join(lines) + ("\n  ..." if len(stale) > 5 else "")
            + "\nResults would mix the two. Re-run with --rerun-changed to run those points again (their old "
            "folders are set aside, nothing is deleted), or give the sweep another name")
    for r in stale:
        folder = run_dir(configs[r["point"]])
        if folder.exists():
            set_aside(folder, r.get("fingerprint") or "unknown")
    gone = {r["point"] for r in stale}
    kept = [r for r in rows if r["point"] not in gone]
    write_csv_rows(csv_path or out / RESULTS_CSV, kept)
    return kept


def sweep_setup(data: Mapping[str, Any]) -> tuple[Path, list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """``(output folder, points in order, slug -> the point's run config)`` of a sweep config."""
    base = {k: v for k, v in data.items() if k != "sweep"}
    name = str(base.get("name") or "sweep")
    out = Path(str(base.get("output_dir") or "runs")) / name
    out.mkdir(parents=True, exist_ok=True)
    points = sweep_points(data["sweep"])
    return out, points, {point_slug(p): _point_config(base, name, p) for p in points}


def run_sweep(data: Mapping[str, Any], callbacks: Sequence[Any] = (), rerun_changed: bool = False) -> dict[str, Any]:
    """Run every point of ``data['sweep']`` not yet in ``results.csv``; write the summary files.

    A point whose row was made with another config (its ``fingerprint``) is refused, or with
    ``rerun_changed`` run again (:func:`_drop_stale_rows`)."""
    out, points, configs = sweep_setup(data)
    rows = _drop_stale_rows(out, read_csv_rows(out / RESULTS_CSV), configs, rerun_changed)
    done = {r["point"] for r in rows}
    todo = [p for p in points if point_slug(p) not in done]
    run_points(todo, configs, rows, out / RESULTS_CSV, f"sweep {out.name}", len(points), callbacks, rerun_changed)
    summary = write_summary(out, rows, sweep_keys(data["sweep"]))
    return {"results": str(out / RESULTS_CSV), "points": len(points), "ran": len(todo), **summary}


def run_points(todo: Sequence[Mapping[str, Any]], configs: Mapping[str, Mapping[str, Any]], rows: list[dict[str, Any]],
               csv_path: Path, desc: str, total: int, callbacks: Sequence[Any] = (), rerun_changed: bool = False,
               claim: Any = None) -> int:
    """Fit, test and measure each point of ``todo``, appending its row to ``rows`` and rewriting ``csv_path``
    (atomically) after each; returns how many ran. ``claim(slug)``, when given, is a context manager that
    yields whether this process may run the point (another holding it is skipped)."""
    import contextlib

    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="point", initial=total - len(todo))
    ran = 0
    for point in todo:
        slug = point_slug(point)
        bar.set_postfix_str(slug)
        with (claim(slug) if claim is not None else contextlib.nullcontext(True)) as mine:
            if not mine:
                bar.write(f"{slug}: run by another process, skipped")
                continue
            point_data = configs[slug]
            probe = CostProbe(point_data)
            result = run_point(point_data, callbacks=[*callbacks, probe], rerun_changed=rerun_changed)
            cost = probe.cost if probe.cost is not None else checkpoint_cost(point_data, result.get("checkpoint"))
            rows.append(sweep_row(slug, point, point_data, {**result, **cost}))
            write_csv_rows(csv_path, rows)
            ran += 1
        bar.write(point_line(rows[-1]))
        bar.update(1)
    bar.close()
    return ran


def point_line(row: Mapping[str, Any]) -> str:
    """The console line of a finished point: its name, accuracy and fit + test seconds."""
    acc = _float(row.get("accuracy"))
    seconds = sum(_float(row.get(k)) or 0.0 for k in ("fit_s", "test_s"))
    return f"{row['point']}: accuracy {'-' if acc is None else f'{100 * acc:.1f} %'} ({seconds:.0f} s)"


def sweep_row(slug: str, point: Mapping[str, Any], data: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
    """One CSV row: the point's keys, accuracy overall and per family, cost and provenance."""
    row: dict[str, Any] = {"point": slug, **{k: v for k, v in point.items()}}
    row["compressor"] = (data.get("model") or {}).get("compressor", {}).get("name", "")
    budget = data.get("budget") or {}
    own = budget.get("policy") if isinstance(budget.get("policy"), Mapping) else {}
    # the configured M: budget.tokens_per_frame, or the fixed policy's own key ("" for dynamic/frames)
    m = budget.get("tokens_per_frame")
    row["tokens_per_frame"] = m if m is not None else own.get("tokens_per_frame", "")
    row["seed"] = data.get("seed", 0)
    row["fingerprint"] = config_fingerprint(data)  # a re-run with another config is refused or redone
    row["accuracy"] = result.get("test/acc", "")
    for key, value in sorted(result.items()):
        if key.startswith("test/acc/"):
            row[f"acc/{key.removeprefix('test/acc/')}"] = value
        elif key.startswith("test/ceiling"):
            row[key.removeprefix("test/")] = value
    if not any(k.startswith("ceiling") for k in row):
        row.update({k: round(v, 4) for k, v in test_ceilings(data).items()})
    row.update(length_accuracy(result.get("run_dir"), data))
    for key in ("visual_tokens", "frames", "tokens_per_frame"):
        for source in (f"test/{key}", f"train/{key}"):
            if source in result:
                row[f"{key}_per_sample" if key != "tokens_per_frame" else "mean_tokens_per_frame"] = round(float(result[source]), 2)
                break
    policy = (data.get("budget") or {}).get("policy") or "dynamic"
    row["budget_policy"] = policy if isinstance(policy, str) else policy.get("name", "")
    for key in ("planned", "actual"):  # visual tokens per test sample: the plan and what was spliced
        if f"test/tokens/{key}" in result:
            row[f"test_tokens_{key}"] = round(float(result[f"test/tokens/{key}"]), 2)
    for key in ("step_time_s", "peak_memory_mb", "fit_s", "test_s", "global_step"):
        row[key] = result.get(key, "")
    for key in COST_COLUMNS:
        row[key] = "" if result.get(key) is None else result[key]
    row["plugins"] = json.dumps(_provenance(result.get("run_dir")), sort_keys=True)
    return row


class CostProbe(pl.Callback):
    """Measures the fitted model's inference cost when training ends (:func:`point_cost`), so the
    sweep needs no second model; ``cost`` stays ``None`` when the fit did not train (a finished
    point re-run), and the sweep then loads the checkpoint (:func:`checkpoint_cost`)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        from dynvlm.model.parallel import precision_dtype, precision_of

        precision_dtype(precision_of(data.get("trainer")))  # an unmeasurable precision fails before the fit, not after
        self.data = data
        self.cost: dict[str, Any] | None = None

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Measure the fitted model's prefill cost (:func:`point_cost`) into :attr:`cost`, while it is in memory."""
        self.cost = point_cost(pl_module, self.data)


def point_cost(model: Any, data: Mapping[str, Any]) -> dict[str, Any]:
    """:data:`COST_COLUMNS` of ``model`` on the first :data:`COST_SAMPLES` test samples of ``data``
    (``{}`` when the config has no test split), measured under ``data``'s ``trainer.precision`` (autocast
    under ``*-mixed``): the model runs as the Trainer's test loop ran it."""
    from dynvlm.measure.cost import measure_cost
    from dynvlm.model.parallel import precision_of
    from dynvlm.run.train import make_datamodule

    dm = make_datamodule(data)
    if dm.source("test") is None:
        return {}
    ds = dm.dataset("test")
    samples = [ds.decode(ds.items[i], i) for i in range(min(COST_SAMPLES, len(ds)))]
    if not samples:
        return {}
    # outside the Trainer: without its precision context a bf16-loaded model would meet fp32 weights, or
    # a *-mixed one be timed in fp32
    cost = measure_cost(model, samples, repeats=COST_REPEATS, precision=precision_of(data.get("trainer")))
    out = {k: cost[k] for k in COST_COLUMNS}
    for key in ("prefill_ms", "prompt_tokens"):
        if out[key] is not None:
            out[key] = round(float(out[key]), 3)
    return out


def checkpoint_cost(data: Mapping[str, Any], checkpoint: str | None) -> dict[str, Any]:
    """:func:`point_cost` of the model ``data`` builds with ``checkpoint``'s weights (when given), its
    parameter dtypes made what ``trainer.precision`` tests with (as ``dynvlm test`` does for the point)."""
    import torch

    from dynvlm.model.checkpoint import read_checkpoint
    from dynvlm.model.parallel import loop_dtype, precision_of
    from dynvlm.model.restore import restore
    from dynvlm.run.strategy import prepare_precision

    model, _ = restore(data, read_checkpoint(checkpoint) if checkpoint else None, source=checkpoint)
    prepare_precision(model, data.get("trainer") or {})
    cast = loop_dtype(precision_of(data.get("trainer")))
    if cast is not None:  # what Lightning's loops cast the model to (64-true, which prepare_precision leaves alone)
        model.to(cast)
    if torch.cuda.is_available():
        model = model.cuda()
    return point_cost(model, data)


def test_ceilings(data: Mapping[str, Any]) -> dict[str, float]:
    """Mean accuracy ceiling of the point's test multiple-choice file at its fixed budget:
    ``{"ceiling": overall, "ceiling/<family>": ...}`` (:func:`dynvlm.data.synth.ceiling`: 1 when the
    frames the budget keeps, ``N_max // M``, see every piece of a question's evidence, else chance).
    A fallback: a row takes the model's own ``test/ceiling`` (from the frames it really kept, so
    right for any policy and compressor) when the test logged it.

    Empty when the file has no ``evidence_groups`` (real benchmarks) or ``tokens_per_frame`` is unset.
    """
    from dynvlm.data.synth import ceilings

    budget = data.get("budget") or {}
    m = budget.get("tokens_per_frame")
    path = test_file(data)
    if not m or path is None or not Path(str(path)).is_file():
        return {}
    records = [json.loads(line) for line in Path(str(path)).read_text().splitlines() if line.strip()]
    if not records or any("evidence_groups" not in r for r in records):
        return {}
    max_tokens = int(budget.get("max_tokens", BudgetConfig().max_tokens))
    keep = max(1, max_tokens // int(m))
    out = ceilings(records, budget.get("fps", 1.0), budget.get("max_frames", 128), keep)
    return {("ceiling" if k == "overall" else f"ceiling/{k}"): v for k, v in out.items()}


def length_accuracy(run_dir: str | None, data: Mapping[str, Any]) -> dict[str, float]:
    """``{"acc_len/<lo>-<hi>s": accuracy}`` over the test questions about clips of each length range of
    the synthetic test set (``data.synth.duration_mix``), read from the point's ``predictions.jsonl``;
    empty without a mix or predictions. The dynamic policy gives short and long clips different M, so
    its gain shows per clip length."""
    ranges = ((data.get("data") or {}).get("synth") or {}).get("duration_mix") or []
    path = test_file(data)
    preds = Path(str(run_dir)) / "predictions.jsonl" if run_dir else None
    if not ranges or path is None or not path.is_file() or preds is None or not preds.is_file():
        return {}
    duration = {r["question_id"]: r.get("duration") for r in map(json.loads, path.read_text().splitlines()) if r}
    hits: dict[str, list[bool]] = {}
    for rec in map(json.loads, preds.read_text().splitlines()):
        d = duration.get(rec.get("question_id"))
        for lo, hi in ranges:
            if d is not None and rec.get("kind") == "mc" and int(lo) <= d <= int(hi):
                key = f"acc_len/{lo}s" if lo == hi else f"acc_len/{lo}-{hi}s"
                hits.setdefault(key, []).append(rec["pred"] == rec["answer"])
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(hits.items())}


def _provenance(run_dir: str | None) -> dict[str, str]:
    if not run_dir:
        return {}
    logs = sorted(Path(run_dir).glob("logs/version_*/hparams.yaml"))
    if not logs:
        return {}
    hparams = OmegaConf.to_container(OmegaConf.load(logs[-1]))
    return dict(hparams.get("provenance") or {}) if isinstance(hparams, dict) else {}


# -- results files ---------------------------------------------------------------------------


def write_summary(out: Path, rows: Sequence[Mapping[str, Any]], sweep_keys: Sequence[str]) -> dict[str, Any]:
    """``results.md``, ``accuracy_vs_tokens.png`` and ``accuracy_vs_prefill_flops.png`` from the rows;
    returns their paths (``None`` for a plot without data)."""
    cells = _cells(rows, sweep_keys)
    (out / "results.md").write_text(sweep_markdown(rows, cells, sweep_keys))
    plot = out / "accuracy_vs_tokens.png"
    if cells:
        plot_accuracy(cells, plot, dynamic_levels(rows, sweep_keys))
    flops = _flops_cells(rows, sweep_keys)
    flops_plot = out / FLOPS_PLOT
    if flops:
        plot_accuracy_vs_flops(flops, flops_plot)
    return {"results_md": str(out / "results.md"), "plot": str(plot) if cells else None,
            "flops_plot": str(flops_plot) if flops else None}


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


#: swept keys a row's setting already shows (compressor, M, policy name) or that only repeat it (seed)
_SHOWN_KEYS = ("seed", COMPRESSOR_KEY, TOKENS_KEY, "budget.policy.tokens_per_frame", "budget.policy.name")


def row_policy(row: Mapping[str, Any]) -> str:
    """The row's budget policy name (``dynamic`` when the row does not say)."""
    return str(row.get("budget_policy") or "dynamic")


def row_tokens(row: Mapping[str, Any]) -> int | None:
    """The row's ``M``: the configured tokens per frame (``budget.tokens_per_frame`` or the policy's
    own ``tokens_per_frame``), else the measured ``mean_tokens_per_frame`` rounded (``dynamic``
    without ``M``, ``frames``); ``None`` when the row has neither."""
    for value in (row.get("tokens_per_frame"), row.get("budget.policy.tokens_per_frame")):
        m = _float(value)
        if m is not None:
            return int(m)
    mean = _float(row.get("mean_tokens_per_frame"))
    return None if mean is None else int(round(mean))


def dynamic_row(row: Mapping[str, Any]) -> bool:
    """Whether a row ran the ``dynamic`` policy with no fixed ``M`` (each clip its own ``N_max // T``):
    such rows have no place on the tokens-per-frame axis and are tabled apart (:func:`dynamic_table`)."""
    return row_policy(row) == "dynamic" and all(
        _float(row.get(k)) is None for k in ("tokens_per_frame", "budget.policy.tokens_per_frame"))


def row_setting(row: Mapping[str, Any], sweep_keys: Sequence[str] = ()) -> tuple[str, int] | None:
    """``(label, M)``: the cell a row's accuracy pools into, or ``None`` without an ``M``.

    Rows share a cell only when they differ by ``seed`` alone: the label is the compressor, then
    the budget policy when it is not ``dynamic`` (``pool (frames)``), then every other swept key
    with its value (``pool lr=0.001``), so the seed spread never mixes settings.
    """
    m = row_tokens(row)
    if m is None:
        return None
    extras = {}
    for key in sweep_keys:
        # a policy given by its name only is already in the label; a mapping (its own keys) is not
        if key in _SHOWN_KEYS or (key == "budget.policy" and isinstance(row.get(key), str)
                                  and row.get(key) == row_policy(row)):
            continue
        extras[key.removeprefix("model.").removeprefix("budget.")] = row.get(key, "")
    return setting_label(row.get("compressor", ""), row_policy(row), extras=extras), m


def _cells(rows: Sequence[Mapping[str, Any]], sweep_keys: Sequence[str] = ()) -> dict[tuple[str, int], list[float]]:
    """``(setting label, M) -> accuracies`` over seeds (:func:`row_setting`), rows with a tokens per
    frame only (:func:`dynamic_row` rows are kept apart)."""
    cells: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        acc, setting = _float(row.get("accuracy")), row_setting(row, sweep_keys)
        if acc is None or setting is None or dynamic_row(row):  # dynamic rows: dynamic_table
            continue
        cells.setdefault(setting, []).append(acc)
    return cells


def _flops_cells(rows: Sequence[Mapping[str, Any]], sweep_keys: Sequence[str] = ()) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """``(setting label, M) -> [(prefill FLOPs, accuracy)]`` over seeds (rows with both)."""
    cells: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for row in rows:
        acc, setting, flops = _float(row.get("accuracy")), row_setting(row, sweep_keys), _float(row.get("flops_prefill"))
        if acc is None or setting is None or not flops:
            continue
        cells.setdefault(setting, []).append((flops, acc))
    return cells


def cost_table_lines(rows: Sequence[Mapping[str, Any]], sweep_keys: Sequence[str] = ()) -> list[str]:
    """Markdown lines: per setting (:func:`row_setting`) and M, the measured prefill cost (means over
    seeds; empty when no row has cost columns)."""
    cells: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for row in rows:
        setting = row_setting(row, sweep_keys)
        if _float(row.get("flops_prefill")) and setting is not None:
            cells.setdefault(setting, []).append(row)
    if not cells:
        return []

    def mean(rs: Sequence[Mapping[str, Any]], key: str) -> float | None:
        vals = [v for v in (_float(r.get(key)) for r in rs) if v is not None]
        return statistics.fmean(vals) if vals else None

    def fmt(v: float | None, scale: float = 1.0, digits: int = 1) -> str:
        return "—" if v is None else f"{v / scale:.{digits}f}"

    lines = ["## Cost", "",
             f"Prefill cost per test sample (mean of the first {COST_SAMPLES} test samples, seeds averaged), "
             "measured after the fit (`dynvlm.measure.cost.measure_cost`): FLOPs counted by torch's FlopCounterMode "
             "(matmuls, convolutions, attention; pooling counts 0), latency the median of timed prefills, KV "
             "cache computed from the LLM config and the prompt length. Accuracy against prefill FLOPs: "
             f"`{FLOPS_PLOT}`.", "",
             "| compressor | M | prompt tokens | encoder MFLOP | compressor MFLOP | projector MFLOP | LLM MFLOP "
             "| total MFLOP | prefill ms | KV KiB | peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (comp, m), rs in sorted(cells.items()):
        vals = [fmt(mean(rs, "prompt_tokens"), digits=0),
                *(fmt(mean(rs, f"flops_{p}"), 1e6) for p in ("encoder", "compressor", "projector", "llm_prefill", "prefill")),
                fmt(mean(rs, "prefill_ms")), fmt(mean(rs, "kv_bytes"), 2**10), fmt(mean(rs, "peak_mem_bytes"), 2**20, 0)]
        lines.append(f"| {comp} | {m} | " + " | ".join(vals) + " |")
    return [*lines, ""]


def sweep_markdown(rows: Sequence[Mapping[str, Any]], cells: Mapping[tuple[str, int], list[float]], sweep_keys: Sequence[str]) -> str:
    """A compressor x tokens-per-frame accuracy table (mean ± seed spread), then every row."""
    lines = ["# Results", ""]
    if cells:
        compressors = sorted({c for c, _ in cells})
        tokens = sorted({t for _, t in cells})
        lines += ["Accuracy (%) by setting and tokens per frame M; ± is the range across seeds. A setting is the "
                  "compressor, its budget policy in parentheses when not `dynamic`, and any other swept key; M is "
                  "the configured tokens per frame, else the measured mean.", ""]
        lines.append("| compressor | " + " | ".join(f"M={t}" for t in tokens) + " |")
        lines.append("|---|" + "---|" * len(tokens))
        for comp in compressors:
            vals = []
            for t in tokens:
                accs = cells.get((comp, t))
                vals.append(_fmt_cell(accs) if accs else "—")
            lines.append(f"| {comp} | " + " | ".join(vals) + " |")
        lines += ["", *findings(cells), *family_bests(rows, sweep_keys), ""]
    lines += dynamic_table(rows, sweep_keys)
    if cells:
        lines += ceiling_table(rows)
    lines += cost_table_lines(rows, sweep_keys)
    columns = [c for c in ("point", "seed", "accuracy", "ceiling", "visual_tokens_per_sample", "frames_per_sample", "step_time_s",
                           "peak_memory_mb", "flops_prefill", "prefill_ms") if any(c in r for r in rows)]
    if rows:
        lines += ["## All points", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in rows:
            lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    """A table cell: floats to 4 significant decimals (a CSV round trip gives 0.4625000059604645)."""
    number = _float(value)
    if number is None or isinstance(value, bool) or float(number).is_integer() and abs(number) >= 1e6:
        return str(value)
    return f"{number:.4g}" if abs(number) < 1e6 else f"{number:.4e}"


def ceiling_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: per budget policy and tokens per frame (the frames kept follow from both), the
    coverage ceiling beside mean accuracy, per family (empty when no row carries a ``ceiling``)."""
    by_m: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for row in rows:
        m = row_tokens(row)
        if _float(row.get("ceiling")) is not None and m is not None:
            # dynamic rows have no fixed M (each clip its own): one row for all of them, after the M rows
            key = ("dynamic, N_max / T", 1 << 30) if dynamic_row(row) else (row_policy(row), m)
            by_m.setdefault(key, []).append(row)
    if not by_m:
        return []
    families = sorted({k.removeprefix("ceiling/") for r in rows for k in r if k.startswith("ceiling/")})
    head = ["M", "frames kept", "overall", *families]
    lines = ["## Accuracy vs ceiling", "",
             "Mean accuracy over compressors and seeds / the best accuracy the kept frames allow (coverage "
             "ceiling: a question whose evidence no kept frame shows is at chance), in %.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in sorted(by_m):
        rs = by_m[m]

        def pair(acc_key: str, ceil_key: str, rs: Sequence[Mapping[str, Any]] = rs) -> str:
            accs = [a for a in (_float(r.get(acc_key)) for r in rs) if a is not None]
            ceils = [c for c in (_float(r.get(ceil_key)) for r in rs) if c is not None]
            if not accs or not ceils:
                return "—"
            return f"{100 * statistics.fmean(accs):.1f} / {100 * statistics.fmean(ceils):.1f}"

        frames = rs[0].get("frames_per_sample", "")
        cells = [pair("accuracy", "ceiling"), *(pair(f"acc/{f}", f"ceiling/{f}") for f in families)]
        label = str(m[1]) if m[0] == "dynamic" else f"{m[1]} ({m[0]})" if m[1] != 1 << 30 else f"({m[0]})"
        lines.append(f"| {label} | {frames} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _fmt_cell(accs: Sequence[float]) -> str:
    mean = 100 * statistics.fmean(accs)
    if len(accs) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * (max(accs) - min(accs)) / 2:.1f}"


def findings(cells: Mapping[tuple[str, int], list[float]]) -> list[str]:
    """Plain statements read off the numbers: best-worst gap vs seed spread, peak position."""
    means = {k: statistics.fmean(v) for k, v in cells.items()}
    spreads = [max(v) - min(v) for v in cells.values() if len(v) > 1]
    out = []
    best, worst = max(means, key=means.get), min(means, key=means.get)
    gap = means[best] - means[worst]
    out.append(f"- Best: {best[0]} at M={best[1]} ({100 * means[best]:.1f} %); worst: {worst[0]} at M={worst[1]} ({100 * means[worst]:.1f} %); gap {100 * gap:.1f} points.")
    if spreads:
        noise = max(spreads)
        verdict = "more" if gap > 2 * noise else "not more"
        out.append(f"- Largest seed spread (max − min over seeds of one setting): {100 * noise:.1f} points; the best–worst gap is {verdict} than twice that.")
    else:
        noise = None
        out.append("- Only one seed per setting: seed noise is not measured, so no difference can be called beyond noise.")
    for comp in sorted({c for c, _ in cells}):
        series = sorted((t, means[(c, t)]) for c, t in means if c == comp)
        if len(series) >= 3:
            peak = max(range(len(series)), key=lambda i: series[i][1])
            where = "at a middle" if 0 < peak < len(series) - 1 else "at an end"
            # a peak counts only when it stands above both ends by more than twice this setting's
            # own seed spread: a noisier setting must not veto it, nor a quieter one lend it confidence
            own = setting_spread(cells, comp)
            margin = series[peak][1] - max(series[0][1], series[-1][1])
            if where == "at a middle" and (own is None or margin <= 2 * own):
                why = "seed noise is not measured" if own is None else f"{100 * margin:.1f} points above the ends, within twice the seed spread"
                out.append(f"- {comp}: highest at M={series[peak][0]}, but no peak can be claimed ({why}).")
            elif where == "at a middle":
                out.append(f"- {comp}: accuracy peaks {where} tokens per frame (M={series[peak][0]}): "
                           f"{100 * margin:.1f} points above both ends, more than twice its seed spread ({100 * own:.1f}).")
            else:
                out.append(f"- {comp}: accuracy peaks {where} tokens per frame (M={series[peak][0]}).")
    tokens = sorted({t for _, t in cells})
    for t in tokens:
        at_t = {c: means[(c, t)] for c, tt in means if tt == t}
        hi, lo = max(at_t, key=at_t.get, default=None), min(at_t, key=at_t.get, default=None)
        pair = [max(v) - min(v) for v in (cells[(hi, t)], cells[(lo, t)]) if len(v) > 1] if hi else []
        if len(at_t) >= 2 and pair:
            # judged by the seeds of the two settings compared, not the noisiest one of the grid
            spread_t = at_t[hi] - at_t[lo]
            beyond = "beyond" if spread_t > 2 * max(pair) else "within"
            out.append(f"- M={t}: compressors differ by {100 * spread_t:.1f} points ({hi} − {lo}), {beyond} "
                       f"seed noise (their larger seed spread {100 * max(pair):.1f}).")
    return out


def family_bests(rows: Sequence[Mapping[str, Any]], sweep_keys: Sequence[str] = ()) -> list[str]:
    """One line per setting with a tokens-per-frame axis: each question family's best mean accuracy
    (over seeds) and the M where it is reached, so a family no M serves shows up."""
    acc: dict[tuple[str, str, int], list[float]] = {}
    for row in rows:
        setting = row_setting(row, sweep_keys)
        if setting is None or dynamic_row(row):
            continue
        for key, value in row.items():
            if key.startswith("acc/") and _float(value) is not None:
                acc.setdefault((setting[0], key.removeprefix("acc/"), setting[1]), []).append(float(value))
    out = []
    for label in sorted({k[0] for k in acc}):
        best = []
        for fam in sorted({k[1] for k in acc if k[0] == label}):
            m, a = max(((k[2], statistics.fmean(v)) for k, v in acc.items() if k[:2] == (label, fam)), key=lambda t: t[1])
            best.append(f"{fam} {100 * a:.1f} % at M={m}")
        out.append(f"- {label}: best per family: {', '.join(best)}.")
    return out


def setting_spread(cells: Mapping[tuple[str, int], list[float]], label: str) -> float | None:
    """The largest seed spread (max − min over seeds) among ``label``'s cells; ``None`` with one seed."""
    spreads = [max(v) - min(v) for (c, _), v in cells.items() if c == label and len(v) > 1]
    return max(spreads) if spreads else None


def _strip_policy(label: str) -> str:
    """A setting label without its ``(policy)`` part: ``pool (fixed) lr=1`` -> ``pool lr=1``."""
    return re.sub(r" \([^)]*\)", "", label, count=1)


def dynamic_table(rows: Sequence[Mapping[str, Any]], sweep_keys: Sequence[str] = ()) -> list[str]:
    """Markdown lines: each dynamic setting (:func:`dynamic_row`: every clip gets ``N_max // T`` tokens
    per frame) beside every fixed M of the same compressor and swept keys, overall and per clip length
    (the ``acc_len/`` columns), then the finding: the dynamic setting against each fixed M, judged by
    twice the larger seed spread of the two cells compared. Empty without dynamic rows."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        setting = row_setting(row, sweep_keys)
        if setting is None or _float(row.get("accuracy")) is None:
            continue
        label, m = setting
        groups.setdefault((label, "dynamic" if dynamic_row(row) else f"M={m}"), []).append(row)
    dynamic = sorted(k for k in groups if k[1] == "dynamic")
    if not dynamic:
        return []
    lengths = sorted({k for r in rows for k in r if k.startswith("acc_len/")}, key=lambda k: int(re.findall(r"\d+", k)[0]))
    head = ["setting", "budget", "mean M", "all clips", *(k.removeprefix("acc_len/") + " clips" for k in lengths)]
    lines = ["## Dynamic budget against fixed tokens per frame", "",
             "The dynamic policy gives each clip M = N_max / T (short clips many tokens per frame, long clips many "
             "frames); the fixed rows give every clip the same M. Accuracy (%) on the same test questions, overall "
             "and per clip length; ± is half the range across seeds.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out: list[str] = []

    def accs(rs: Sequence[Mapping[str, Any]], key: str) -> list[float]:
        return [a for a in (_float(r.get(key)) for r in rs) if a is not None]

    for label, _ in dynamic:
        # the same compressor and swept keys under any policy that fixes M (fixed, dynamic with M, frames)
        fixed = sorted((k for k in groups if _strip_policy(k[0]) == label and k[1] != "dynamic"),
                       key=lambda k: (int(k[1][2:]), k[0]))
        for key in [(label, "dynamic"), *fixed]:
            rs = groups[key]
            mean_m = accs(rs, "mean_tokens_per_frame")
            cells = [_fmt_cell(accs(rs, k)) if accs(rs, k) else "—" for k in ("accuracy", *lengths)]
            lines.append(f"| {key[0]} | {key[1]} | {f'{statistics.fmean(mean_m):.1f}' if mean_m else '—'} | "
                         + " | ".join(cells) + " |")
        one = len({k[0] for k in fixed}) == 1  # name cells "M=4", or "pool (frames) M=4" when policies differ
        out += dynamic_findings(label, accs(groups[(label, "dynamic")], "accuracy"),
                                {(k[1] if one else f"{k[0]} {k[1]}"): accs(groups[k], "accuracy") for k in fixed})
    return [*lines, "", *out, ""]


def dynamic_findings(label: str, dyn: Sequence[float], fixed: Mapping[str, Sequence[float]]) -> list[str]:
    """One statement: ``label``'s dynamic accuracies against its fixed-M cells (``"M=4" -> accuracies``):
    whether it beats every fixed M by more than twice the larger seed spread of each pair compared."""
    if not dyn or not fixed:
        return []
    d = statistics.fmean(dyn)
    best = max(fixed, key=lambda k: statistics.fmean(fixed[k]))
    spread = [max(v) - min(v) for v in (dyn, *fixed.values()) if len(v) > 1]
    if len(dyn) < 2 or len(spread) < len(fixed) + 1:
        return [f"- {label}: dynamic {100 * d:.1f} % against the best fixed {best} "
                f"({100 * statistics.fmean(fixed[best]):.1f} %): seed noise is not measured for every cell."]
    fails = [k for k, v in fixed.items()
             if d - statistics.fmean(v) <= 2 * max(max(dyn) - min(dyn), max(v) - min(v))]
    gap = d - statistics.fmean(fixed[best])
    pair = max(max(dyn) - min(dyn), max(fixed[best]) - min(fixed[best]))
    verdict = ("above every fixed M by more than twice the larger seed spread of each pair compared" if not fails
               else f"not above {', '.join(fails)} by more than twice the larger seed spread of the two")
    return [f"- {label}: dynamic {100 * d:.1f} % against the best fixed {best} ({100 * statistics.fmean(fixed[best]):.1f} %): "
            f"{gap * 100:+.1f} points (larger seed spread of the two {100 * pair:.1f}); {verdict}."]


def dynamic_levels(rows: Sequence[Mapping[str, Any]], sweep_keys: Sequence[str] = ()) -> dict[str, float]:
    """``setting label -> mean accuracy`` of the :func:`dynamic_row` rows (drawn as levels across the M axis)."""
    acc: dict[str, list[float]] = {}
    for row in rows:
        setting, a = row_setting(row, sweep_keys), _float(row.get("accuracy"))
        if dynamic_row(row) and setting is not None and a is not None:
            acc.setdefault(setting[0], []).append(a)
    return {k: statistics.fmean(v) for k, v in acc.items()}


def plot_accuracy(cells: Mapping[tuple[str, int], list[float]], path: Path,
                  dynamic: Mapping[str, float] | None = None) -> None:
    """Accuracy vs tokens per frame, one line per compressor, bars spanning the seeds; each
    ``dynamic`` setting (label -> accuracy) a dashed level in its compressor's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for comp in sorted({c for c, _ in cells}):
        series = sorted((t, v) for (c, t), v in cells.items() if c == comp)
        xs = [t for t, _ in series]
        ys = [100 * statistics.fmean(v) for _, v in series]
        lo = [y - 100 * min(v) for y, (_, v) in zip(ys, series)]
        hi = [100 * max(v) - y for y, (_, v) in zip(ys, series)]
        line = ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=comp)
        for label, acc in (dynamic or {}).items():
            if label == _strip_policy(comp):
                ax.axhline(100 * acc, ls="--", color=line[0].get_color(), label=f"{label} dynamic (N_max / T)")
    ax.set_xscale("log", base=2)
    _finish_plot(fig, ax, "visual tokens per frame (M)", path)


def plot_accuracy_vs_flops(cells: Mapping[tuple[str, int], list[tuple[float, float]]], path: Path) -> None:
    """Accuracy vs measured prefill FLOPs per sample (log x), one line per compressor through its
    tokens-per-frame settings (labelled ``M=..``), bars spanning the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for comp in sorted({c for c, _ in cells}):
        series = sorted(((statistics.fmean(f for f, _ in v), [a for _, a in v], t) for (c, t), v in cells.items() if c == comp))
        xs = [x for x, _, _ in series]
        ys = [100 * statistics.fmean(accs) for _, accs, _ in series]
        lo = [y - 100 * min(accs) for y, (_, accs, _) in zip(ys, series)]
        hi = [100 * max(accs) - y for y, (_, accs, _) in zip(ys, series)]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=comp)
        for x, y, (_, _, t) in zip(xs, ys, series):
            ax.annotate(f"M={t}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xscale("log")
    _finish_plot(fig, ax, "prefill FLOPs per sample (measured)", path)


def _finish_plot(fig: Any, ax: Any, xlabel: str, path: Path) -> None:
    """Label an accuracy plot's axes, add the grid and legend, save it to ``path`` and close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- measurements ----------------------------------------------------------------------------


class RunStats(pl.Callback):
    """A Lightning callback timing training steps and reading peak memory for one fit.

    Peak memory is the GPU's max allocated bytes on CUDA, otherwise the process's peak
    resident set (``VmHWM``), reset at the start of the fit where Linux allows it.
    """

    def __init__(self) -> None:
        self.step_times: list[float] = []
        self._t: float | None = None
        self.peak_mb: float | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        reset_peak(pl_module.device)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._t is not None:
            self.step_times.append(time.perf_counter() - self._t)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.peak_mb = peak_bytes(pl_module.device)[0] / 2**20

    def summary(self) -> dict[str, Any]:
        """Median step time (first steps, which warm up kernels, excluded when there are many)."""
        times = self.step_times[3:] if len(self.step_times) > 6 else self.step_times
        return {
            "step_time_s": round(statistics.median(times), 4) if times else "",
            "peak_memory_mb": round(self.peak_mb, 1) if self.peak_mb is not None else "",
        }
