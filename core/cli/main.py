"""The ``dynvlm`` command (also ``python -m dynvlm``).

Subcommands::

    dynvlm fit|validate|test CONFIG [key=value ...] [--checkpoint CKPT] [--print-config]
    dynvlm run CONFIG [key=value ...] [--print-config]   # a sweep when the file has `sweep:`
    dynvlm run SWEEP [--shard I/N | --merge]              # a sweep spread over processes or nodes
    dynvlm eval CONFIG --checkpoint CKPT [--data FILE] [key=value ...]
    dynvlm cost CONFIG [key=value ...] [--meta] [--duration S]  # FLOPs per part, KV bytes, latency
    dynvlm import llava-onevision PATH --out DIR         # a pretrained video LLM -> dynvlm parts + config
    dynvlm cost CONFIG --train [--devices N]             # per-GPU training memory plan
    dynvlm plugins                                       # installed plugins, and failures
    dynvlm bench {kernels,model,data} [args ...]
    dynvlm data synth [args ...]

Heavy modules (torch, Lightning, transformers) are imported only by the subcommand that needs
them, so ``dynvlm plugins`` and ``--print-config`` stay quick.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dynvlm.util.tables import format_table

#: ``dynvlm bench TARGET`` -> "module:function" taking argv and returning an exit code
BENCH_TARGETS = {
    "kernels": "dynvlm.kernels.bench:main",
    "model": "dynvlm.measure.model_bench:main",
    "data": "dynvlm.data.bench:main",
}
#: ``dynvlm import SOURCE`` -> "module:function" taking (path, out, frames=, log=)
IMPORTERS = {"llava-onevision": "dynvlm.model.llava_onevision:import_llava_onevision"}
#: ``dynvlm data ACTION``
DATA_ACTIONS = {"synth": "dynvlm.data.synth:main"}


def _resolve(target: str) -> Callable[..., Any]:
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. budget.tokens_per_frame=36")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _add_rerun_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rerun-changed", action="store_true",
                   help="when a run or sweep point was made with another config, set its folder aside and run it "
                        "again (default: refuse, naming the changed keys)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dynvlm``."""
    parser = argparse.ArgumentParser(prog="dynvlm", description="Visual-token compressors for video LLMs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_ in [
        ("fit", "train a model from a config"),
        ("validate", "run the validation loop"),
        ("test", "evaluate on the test split"),
    ]:
        p = sub.add_parser(name, help=help_)
        _add_config_args(p)
        if name == "fit":
            _add_rerun_arg(p)
        else:
            p.add_argument("--checkpoint", help="checkpoint to load (default: the run's last)")
    p = sub.add_parser("run", help="fit and test a config, or run its sweep (same as `lightning run`)")
    _add_config_args(p)
    _add_rerun_arg(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--shard", metavar="I/N", help="run every N-th point of the sweep from point I (0 <= I < N), "
                       "writing results.shard-I-of-N.csv; the shard that finds every point done merges")
    group.add_argument("--merge", action="store_true", help="merge results.csv and the shard files into results.csv, "
                       "results.md and the plots")
    p = sub.add_parser("eval", help="evaluate a checkpoint on a multiple-choice file")
    _add_config_args(p)
    p.add_argument("--checkpoint", help="checkpoint to evaluate, a file or a sharded (FSDP) checkpoint folder "
                   "(default: the run's last.ckpt); the overrides may "
                   "change its compressor and budget (training-free evaluation)")
    p.add_argument("--data", help="multiple-choice file (VideoMME/MLVU/EgoSchema/PerceptionTest shapes)")
    p.add_argument("--out", help="folder for the JSON and markdown results (a config with sweep: evaluates "
                   "every point, default <run>/transfer)")
    p = sub.add_parser("cost", help="measured prefill cost (FLOPs per part, KV cache, latency, memory) of a "
                                    "config on a synthetic video; no data or weights needed")
    _add_config_args(p)
    p.add_argument("--meta", action="store_true",
                   help="build on the meta device from configs even when checkpoints are present (FLOPs and KV bytes only)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of the synthetic video (default 60)")
    p.add_argument("--repeats", type=int, default=5, help="timed prefills (median reported; default 5)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="where to run when not on meta (default: cuda if available)")
    p.add_argument("--encoder-config", help="a config.json for the encoder (instead of its checkpoint)")
    p.add_argument("--llm-config", help="a config.json for the LLM (instead of its checkpoint)")
    p.add_argument("--json", action="store_true", help="print the measurements as JSON")
    p.add_argument("--train", action="store_true",
                   help="print the per-GPU memory plan of training the config instead (weights, gradients, AdamW "
                        "states, activations per part, LM head and loss; the configured strategy, devices, precision, "
                        "checkpointing and batch), from the meta device")
    p.add_argument("--devices", type=int, help="--train: devices in all (default trainer.devices x trainer.num_nodes)")
    p.add_argument("--text-tokens", type=int, default=256, help="--train: prompt words per sample (default 256)")
    p.add_argument("--answer-tokens", type=int, default=64, help="--train: answer words per sample (default 64)")
    p.add_argument("--kind", choices=["image", "video"],
                   help="--train: sample kind (default: image for pretrain and image_sft, video otherwise)")
    p = sub.add_parser("import", help="import a pretrained video LLM checkpoint as dynvlm weights and a ready config")
    p.add_argument("source", choices=sorted(IMPORTERS), help="the checkpoint's architecture")
    p.add_argument("path", help="a local checkpoint folder (save_pretrained layout, old or new key names)")
    p.add_argument("--out", required=True, help="folder for the encoder, LLM, projector weights, model.yaml and manifest.json")
    p.add_argument("--frames", type=int, default=32, help="frames per video in the written config (default 32)")
    sub.add_parser("plugins", help="list installed plugins").add_argument("--json", action="store_true")
    p = sub.add_parser("bench", help="run a benchmark")
    p.add_argument("target", choices=sorted(BENCH_TARGETS))
    p.add_argument("args", nargs=argparse.REMAINDER)
    p = sub.add_parser("compare", help="compare two sweeps' results.csv point by point (measured timings and memory "
                                       "aside); exit code 1 when they differ")
    p.add_argument("first", help="a results.csv, or the run folder that holds it")
    p.add_argument("second", help="a results.csv, or the run folder that holds it")
    p.add_argument("--ignore", nargs="*", default=[], metavar="COLUMN", help="more columns to leave out")
    p.add_argument("--all-columns", action="store_true",
                   help="compare the measured columns too (step time, peak memory, fit/test seconds, prefill ms)")
    p = sub.add_parser("data", help="data tools")
    p.add_argument("action", choices=sorted(DATA_ACTIONS))
    p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dynvlm`` console script; returns the exit code."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from dynvlm.config import ConfigError
    from dynvlm.registry import PluginError

    try:
        return _dispatch(args)
    except (ConfigError, PluginError) as exc:
        print(f"dynvlm: error: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "plugins":
        return _plugins(as_json=args.json)
    if args.command == "bench":
        return int(_resolve(BENCH_TARGETS[args.target])(args.args) or 0)
    if args.command == "compare":
        from dynvlm.run.compare import compare_cli

        return compare_cli(args.first, args.second, ignore=args.ignore, all_columns=args.all_columns)
    if args.command == "data":
        return int(_resolve(DATA_ACTIONS[args.action])(args.args) or 0)
    if args.command == "import":
        manifest = _resolve(IMPORTERS[args.source])(args.path, args.out, frames=args.frames,
                                                    log=lambda line: print(line, file=sys.stderr))
        print(json.dumps({"config": str(Path(args.out) / "model.yaml"), "tensors": len(manifest["key_map"]),
                          "unused": manifest["unused"]["keys"]}, indent=2))
        return 0

    from dynvlm.config import load_config, to_yaml

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    if args.command == "cost" and args.train:
        from dynvlm.measure.memory_plan import plan_cli

        return plan_cli(cfg, config_path=args.config, devices=args.devices, duration=args.duration,
                        text_tokens=args.text_tokens, answer_tokens=args.answer_tokens, kind=args.kind,
                        as_json=args.json, encoder_config=args.encoder_config, llm_config=args.llm_config)
    if args.command == "cost":
        from dynvlm.measure.cost import cost_cli

        return cost_cli(cfg, config_path=args.config, meta=args.meta, duration=args.duration, repeats=args.repeats,
                        device=args.device, as_json=args.json, encoder_config=args.encoder_config,
                        llm_config=args.llm_config)
    from dynvlm.run.console import quiet_console
    from dynvlm.util.paths import run_dir, shown

    shard = getattr(args, "shard", None)
    log_file = run_dir(cfg) / ("run.log" if not shard else "run.shard-{}-of-{}.log".format(*_shard(shard)))
    print(f"dynvlm: library messages and warnings go to {shown(log_file)}", file=sys.stderr)
    with quiet_console(log_file):
        result = _run_command(args, cfg)
    if result:
        print(json.dumps(_shown_paths(result), indent=2, default=str))
    return 0


def _run_command(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    """The config commands that train or evaluate: ``run``, ``eval``, ``fit``, ``validate``, ``test``."""
    from dynvlm.config import ConfigError
    from dynvlm.util.configs import config_dict

    if args.command == "run" and (args.shard or args.merge):
        from dynvlm.run import shards

        if not cfg.get("sweep"):
            raise ConfigError("--shard and --merge need a config with sweep:")
        data = config_dict(cfg)
        return shards.run_shard(data, _shard(args.shard), rerun_changed=args.rerun_changed) if args.shard \
            else shards.merge(data)
    if args.command == "run":
        from dynvlm.run.sweep import run

        return run(cfg, config_path=args.config, rerun_changed=args.rerun_changed)
    if args.command == "eval":
        from dynvlm.evaluation.command import evaluate_cli

        return evaluate_cli(cfg, checkpoint=args.checkpoint, data=args.data, out=args.out, config_path=args.config)
    from dynvlm.run import train

    if args.command == "fit":
        return train.fit(cfg, rerun_changed=args.rerun_changed)
    return getattr(train, args.command)(cfg, checkpoint=args.checkpoint)


def _shard(text: str) -> tuple[int, int]:
    from dynvlm.run.shards import parse_shard

    return parse_shard(text)


def _shown_paths(result: Any) -> Any:
    """``result`` with every string that names an existing file or folder normalised for printing
    (``experiments/../runs/x`` -> ``runs/x``)."""
    from pathlib import Path

    from dynvlm.util.paths import shown

    if isinstance(result, dict):
        return {k: _shown_paths(v) for k, v in result.items()}
    if isinstance(result, list):
        return [_shown_paths(v) for v in result]
    if isinstance(result, str) and "/" in result and Path(result).exists():
        return shown(result)
    return result


def _plugins(as_json: bool = False) -> int:
    from dynvlm.registry import get_registry

    reg = get_registry()
    rows = [(c.kind, c.name, c.qualname, c.distribution, c.version) for c in reg.table()]
    if as_json:
        out = {
            "components": [dict(zip(("kind", "name", "class", "distribution", "version"), r)) for r in rows],
            "failures": [{"entry_point": f.entry_point, "distribution": f.distribution, "error": f.error} for f in reg.failures],
        }
        print(json.dumps(out, indent=2))
        return 0
    print(format_table(("kind", "name", "class", "distribution", "version"), rows))
    for f in reg.failures:
        print(f"\nFAILED: {f.describe()}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
