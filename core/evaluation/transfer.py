"""``dynvlm eval SWEEP.yaml [--checkpoint CKPT]``: one trained model evaluated at every point of a grid, without training.

A transfer file names the run whose checkpoint is evaluated (through its base config) and a grid
of evaluation-time settings::

    base: synthetic.yaml          # the run that trained the model (name: synthetic)
    sweep:
      model.compressor.name: [pool, tome]
      budget.tokens_per_frame: [1, 4, 16]

(or a list of such grids, whose points are joined).

Each point is the config with the point's keys set (:func:`dynvlm.config.apply_point`), evaluated
by :func:`dynvlm.evaluation.evaluate.evaluate` on the same checkpoint (default: the run's ``last.ckpt``).
Every point's compressor is checked against the checkpoint before anything is evaluated, so a
compressor whose weights the checkpoint lacks fails at once. Results go to ``--out`` (default:
``<checkpoint's run>/transfer``): ``points/<slug>/`` holds each point's ``eval.json``, ``eval.md``
and ``predictions.jsonl``; ``results.csv`` one row per point (accuracy overall and per category,
tokens per frame the model used, frames, planned and actual visual tokens per sample, the accuracy
ceiling of the frames the model kept, the measured cost: ``dynvlm.run.sweep.COST_COLUMNS``) and
``results.md`` the table with the trained-with line.

``dynvlm run`` on such a file would *train* every point (an ablation); use ``dynvlm eval``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dynvlm.config import ConfigError, apply_point, build_component, sweep_points
from dynvlm.evaluation.evaluate import evaluate, same_setting, setting
from dynvlm.model.checkpoint import checkpoint_run, read_checkpoint, stale_compressor_weights, trained_config
from dynvlm.run.sweep import COST_COLUMNS
from dynvlm.util.configs import config_dict
from dynvlm.util.paths import RESULTS_CSV, last_checkpoint


def run_transfer(cfg: DictConfig | Mapping[str, Any], checkpoint: str | None = None, out: str | None = None,
                 config_path: str | None = None) -> dict[str, Any]:
    """Evaluate one checkpoint at every point of ``cfg["sweep"]``; write ``results.csv`` and ``results.md``.

    Args:
        cfg: a config with a ``sweep:`` mapping (dotted key -> list of values).
        checkpoint: the ``.ckpt`` to evaluate, a file or a sharded checkpoint folder (default:
            ``<output_dir>/<name>/checkpoints/last.ckpt``).
        out: the results folder (default: the checkpoint's run folder + ``/transfer``).
        config_path: the config file, named (with its ``base:``) in the error for a missing checkpoint.

    Returns:
        ``{"results", "results_md", "points", "checkpoint", "trained_with"}``.

    Raises:
        ConfigError: no checkpoint (naming the command that trains it), or a point's compressor
            needs weights the checkpoint lacks (:class:`dynvlm.model.checkpoint.CompressorWeightsError`).
    """
    from dynvlm.run.sweep import point_slug, test_ceilings
    from dynvlm.util.tables import write_csv_rows

    data = config_dict(cfg)
    base = {k: v for k, v in data.items() if k != "sweep"}
    points = sweep_points(data["sweep"])
    if checkpoint is None:
        last = last_checkpoint(base)
        # exists, not is_file: FSDP's sharded last.ckpt is a folder (a damaged one fails in read_checkpoint)
        if not last.exists():
            raise ConfigError(f"no checkpoint to evaluate: {last} does not exist. Train the model first "
                              f"({_fit_hint(config_path)}) or pass --checkpoint CKPT")
        checkpoint = str(last)
    ckpt = read_checkpoint(checkpoint)
    trained = trained_config(ckpt, checkpoint)
    configs = [apply_point(base, p) for p in points]
    for c in configs:  # eval.json per point holds the results: no CSV log folder per point in the trained run
        c["trainer"] = {**(c.get("trainer") or {}), "logger": False}
    _check_compressors(ckpt, checkpoint, configs)
    folder = Path(out) if out else checkpoint_run(checkpoint) / "transfer"
    folder.mkdir(parents=True, exist_ok=True)
    trained_with = setting(trained)
    rows: list[dict[str, Any]] = []
    for point, point_cfg in zip(points, configs):
        slug = point_slug(point)
        report = evaluate(OmegaConf.create(point_cfg), checkpoint, folder / "points" / slug, checkpoint_data=ckpt)
        # the model's own ceiling (test/ceiling: from the frames it really kept, right for any policy
        # or compressor) where the data defines one; else the N_max // M derivation at the M it used
        ceilings = report.get("ceilings") or None
        if ceilings is None:
            used = (report.get("used") or {}).get("tokens_per_frame") or []
            at = apply_point(point_cfg, {"budget.tokens_per_frame": used[0]}) if len(used) == 1 else point_cfg
            ceilings = test_ceilings(at)
        row = transfer_row(slug, point, report, ceilings)
        row["trained_setting"] = same_setting(trained_with, report["evaluated_with"])
        rows.append(row)
        write_csv_rows(folder / RESULTS_CSV, rows)  # after every point: an interrupted sweep keeps what it measured
    (folder / "results.md").write_text(transfer_markdown(rows, checkpoint, trained_with, report["data"]))
    return {"results": str(folder / RESULTS_CSV), "results_md": str(folder / "results.md"), "points": len(rows),
            "checkpoint": checkpoint, "trained_with": trained_with}


def _fit_hint(config_path: str | None) -> str:
    """``dynvlm fit <the config that trains it>``: the transfer file's ``base:`` when it names one."""
    if config_path is None:
        return "dynvlm fit CONFIG"
    path = Path(config_path)
    try:
        base = OmegaConf.load(path).get("base")
    except Exception:  # noqa: BLE001 - the file was loaded before; only the hint is at stake
        base = None
    return f"dynvlm fit {path.parent / base if isinstance(base, str) else path}"


def _check_compressors(ckpt: Mapping[str, Any], checkpoint: str, configs: Sequence[Mapping[str, Any]]) -> None:
    """Raise before any evaluation when a point's compressor has parameters the checkpoint lacks.

    Each distinct compressor is built alone at the encoder's width, which the projector's first
    layer records (``projector.net.0.weight``: ``[hidden, C]``); without it the check is left to
    each point's load.
    """
    weight = ckpt["state_dict"].get("projector.net.0.weight")
    if weight is None:
        return
    seen: set[str] = set()
    for c in configs:
        spec = c["model"]["compressor"]
        key = repr(sorted(spec.items()))
        if key in seen:
            continue
        seen.add(key)
        compressor = build_component("compressor", spec, dim=int(weight.shape[1]))
        stale_compressor_weights(ckpt, spec, compressor, source=f"checkpoint {checkpoint!r}")


def transfer_row(slug: str, point: Mapping[str, Any], report: Mapping[str, Any],
               ceilings: Mapping[str, float] | None = None) -> dict[str, Any]:
    """One ``results.csv`` row: the point's keys, the evaluated setting, what the model used (planned
    and actual visual tokens per sample), accuracy overall and per category, the accuracy ceiling
    where the data defines one, and the measured cost (:data:`dynvlm.run.sweep.COST_COLUMNS`, empty
    cells when not measured).

    Args:
        slug: the point's folder name.
        point: the point's dotted keys and values.
        report: the point's :func:`dynvlm.evaluation.evaluate.summarise` report.
        ceilings: ``{"ceiling", "ceiling/<family>"}``.

    Returns:
        The row (column -> value).
    """

    used = report.get("used") or {}
    row: dict[str, Any] = {"point": slug, **dict(point)}
    row["compressor"] = report["evaluated_with"]["compressor"]
    row["tokens_per_frame"] = report["evaluated_with"]["tokens_per_frame"]
    row["used_tokens_per_frame"] = " ".join(map(str, used.get("tokens_per_frame", [])))
    row["frames_per_sample"] = used.get("frames", "")
    row["visual_tokens_per_sample"] = used.get("visual_tokens", "")
    # the plan vs what the compressor returned and the LLM saw (column names as in a sweep's rows)
    row["test_tokens_planned"] = used.get("planned_tokens", "")
    row["test_tokens_actual"] = used.get("actual_tokens", "")
    row["accuracy"] = report.get("accuracy")
    row["questions"] = report.get("questions")
    for cat, acc in (report.get("per_category") or {}).items():
        row[f"acc/{cat}"] = acc
    row.update({k: round(v, 4) for k, v in (ceilings or {}).items()})
    cost = report.get("cost") or {}
    for key in COST_COLUMNS:
        row[key] = "" if cost.get(key) is None else cost[key]
    row["evaluated_with"] = report["evaluated_with"]["label"]
    row["trained_with"] = (report.get("trained_with") or {}).get("label", "")
    return row


def transfer_markdown(rows: Sequence[Mapping[str, Any]], checkpoint: str, trained_with: Mapping[str, Any] | None,
                     data: str) -> str:
    """``results.md``: the checkpoint, what it was trained with, and one table row per evaluated point."""
    cats = sorted({k.removeprefix("acc/") for r in rows for k in r if k.startswith("acc/")})
    # point keys beyond compressor and M (seed, eval.mode, ...), over every grid of a list of grids
    extra = list(dict.fromkeys(k for r in rows for k in r if k not in _COLUMNS and not k.startswith(("acc/", "ceiling"))))
    header = ["compressor", "tokens/frame", *extra, "frames", "accuracy (%)", *cats, "ceiling (%)", "prefill GFLOPs"]
    lines = [
        f"# Training-free transfer of `{checkpoint}`",
        "",
        f"- trained with {trained_with['label'] if trained_with else '(unknown: the checkpoint carries no config)'}",
        f"- data: `{data}` ({rows[0]['questions'] if rows else 0} questions per point)",
        "- every row: the same weights, evaluated with another compressor or budget (no training); "
        "`*` marks the trained setting",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in rows:
        mark = " *" if r.get("trained_setting") else ""  # the whole setting, not only its label
        used = r.get("used_tokens_per_frame") or "—"
        cells = [f"{r['compressor']}{mark}", str(used), *(str(r.get(k, "")) for k in extra), _num(r.get("frames_per_sample")),
                 _pct(r.get("accuracy")), *(_pct(r.get(f"acc/{c}")) for c in cats), _pct(r.get("ceiling")),
                 _gflops(r.get("flops_prefill"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: row keys the table shows in fixed columns (other point keys, e.g. seed or eval.mode, get their own)
_COLUMNS = {"point", "compressor", "tokens_per_frame", "used_tokens_per_frame", "frames_per_sample",
            "visual_tokens_per_sample", "accuracy", "questions", "trained_with", "evaluated_with", "model.compressor.name",
            "budget.tokens_per_frame", "trained_setting", "test_tokens_planned", "test_tokens_actual",
            *COST_COLUMNS}


def _gflops(value: Any) -> str:
    return "—" if value is None or value == "" else f"{float(value) / 1e9:.3g}"


def _pct(value: Any) -> str:
    return "—" if value is None or value == "" else f"{100 * float(value):.1f}"


def _num(value: Any) -> str:
    return "—" if value is None or value == "" else f"{round(float(value), 1):g}"
