"""Where the wall time of one ablation point goes: data, encoder, compressor, projector, LLM.

Builds the model of ``experiments/synthetic.yaml`` (or ``--config``) at one compressor and tokens per
frame, then times ``--steps`` training steps and one pass over ``--eval`` test questions, split by
component: forward time from hooks on each module, backward and optimiser as the rest of the step.
Prints a markdown table (the numbers in docs/benchmarks.md, section Experiments)::

    .venv/bin/python experiments/profile_point.py --compressor pool --tokens 4
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    from dynvlm import load_config
    from dynvlm.model.video_llm import VideoLLM
    from dynvlm.run.train import make_datamodule
    from dynvlm.util.timing import PartMeter

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(HERE / "synthetic.yaml"))
    p.add_argument("--compressor", default="pool")
    p.add_argument("--tokens", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--eval", type=int, default=240, help="test questions to score")
    p.add_argument("--mkldnn", action="store_true", help="leave oneDNN on (the sweep turns it off on CPU)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    torch.backends.mkldnn.enabled = bool(args.mkldnn)
    cfg = load_config(args.config, [f"model.compressor.name={args.compressor}",
                                    f"budget.tokens_per_frame={args.tokens}", *args.overrides])
    model = VideoLLM(cfg)
    dm = make_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    timers = PartMeter({"encoder": model.encoder, "compressor": model.compressor, "projector": model.projector,
                     "llm": model.llm})
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    phases: dict[str, float] = defaultdict(float)

    def train_pass(n: int) -> None:
        model.train()
        it = iter(dm.train_dataloader())
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                it = iter(dm.train_dataloader())
                batch = next(it)
            t1 = time.perf_counter()
            loss = model(batch, training=True)["loss"]
            t2 = time.perf_counter()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            t3 = time.perf_counter()
            phases["train data"] += t1 - t0
            phases["train forward"] += t2 - t1
            phases["train backward+optimizer"] += t3 - t2

    train_pass(2)  # warm-up: first batches decode and first shapes are slow
    phases.clear()
    timers.totals = dict.fromkeys(timers.totals, 0.0)
    train_pass(args.steps)
    train_fwd = dict(timers.totals)
    timers.totals = dict.fromkeys(timers.totals, 0.0)
    model.eval()
    seen = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        it = iter(dm.test_dataloader())
        while seen < args.eval:
            t1 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            t2 = time.perf_counter()
            model.score_options(batch.samples)
            phases["eval data"] += t2 - t1
            phases["eval scoring"] += time.perf_counter() - t2
            seen += len(batch.samples)
    eval_fwd = dict(timers.totals)
    print(f"compressor {args.compressor}, M={args.tokens}, {args.steps} train steps "
          f"(batch {cfg.data.batch_size}), {seen} test questions, threads {torch.get_num_threads()}")
    print("| phase | total s | per step / question ms |")
    print("|---|---|---|")
    for name in ("train data", "train forward", "train backward+optimizer"):
        print(f"| {name} | {phases[name]:.2f} | {1000 * phases[name] / args.steps:.1f} |")
    for name in ("encoder", "compressor", "projector", "llm"):
        v = train_fwd.get(name, 0.0)
        print(f"| train forward: {name} | {v:.2f} | {1000 * v / args.steps:.1f} |")
    for name in ("eval data", "eval scoring"):
        print(f"| {name} | {phases[name]:.2f} | {1000 * phases[name] / max(seen, 1):.2f} |")
    for name in ("encoder", "compressor", "projector", "llm"):
        v = eval_fwd.get(name, 0.0)
        print(f"| eval forward: {name} | {v:.2f} | {1000 * v / max(seen, 1):.2f} |")
    _ = time.perf_counter() - t0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
