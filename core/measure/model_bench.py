"""``dynvlm bench model``: training-step time and memory of the VideoLLM for T = 8, 32, 128 frames at a fixed budget.

At a fixed ``N_max`` the LLM sees about the same number of positions whatever ``T`` is (short
videos get many tokens per frame, long videos few), so its memory should stay flat while the
encoder's grows with ``T``. Each ``T`` runs in a fresh process so peak memory is its own:

- ``step_s`` / ``cpu_s``: median wall time and process CPU time (all threads) of a training step;
  CPU time is the steadier number on a shared machine;
- ``peak_mib``: peak resident memory of the process (CPU) or peak allocated memory (CUDA);
- per-component activation memory: bytes of tensors autograd saves for backward inside the
  encoder, compressor + projector, and LLM (parameters excluded), and the LLM's share.

Usage: ``python -m dynvlm.measure.model_bench [--frames 8 32 128] [--max-tokens 512] [--steps 3]
[--device cpu|cuda] [--config RUN.yaml] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from dynvlm.util.memory import peak_bytes, reset_peak
from dynvlm.util.timing import PartMeter

DEFAULT_MODEL: dict[str, Any] = {
    # 16 x 16 grid (N = 256) so that M = N_max // T spans 256 -> 16 over T = 8 -> 128
    "encoder": {"name": "clip", "config": {"hidden_size": 96, "intermediate_size": 384, "num_hidden_layers": 2,
                                           "num_attention_heads": 2, "image_size": 64, "patch_size": 4}},
    "compressor": {"name": "pool"},
    "llm": {"name": "hf", "vocabulary": ["what", "colour", "is", "the", "video", "red"],
            "config": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
                       "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 8192}},
}
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "100000000000",
              "MALLOC_TOP_PAD_": "1000000000"}
BENCH_PARTS = ("encoder", "compressor", "projector", "llm")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dynvlm bench model", description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, nargs="+", default=[8, 32, 128], help="video lengths T to measure")
    p.add_argument("--max-tokens", type=int, default=2048, help="budget N_max (fixed across T)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per T (after two warm-up steps)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--config", help="a run config whose model section to measure (default: a small CLIP + Qwen2)")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a markdown table")
    p.add_argument("--stage", default="video_sft", choices=["pretrain", "image_sft", "video_sft"],
                   help="which modules train (pretrain: the encoder and LLM are frozen, as in the paper's first stage)")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: measure one T
    return p


def _model_config(args: argparse.Namespace) -> dict[str, Any]:
    if args.config:
        from dynvlm.config import load_config
        from dynvlm.util.configs import config_dict

        cfg = config_dict(load_config(args.config))
    else:
        cfg = {"model": DEFAULT_MODEL}
    cfg["budget"] = {**(cfg.get("budget") or {}), "max_tokens": args.max_tokens, "max_frames": max(args.frames),
                     "tokens_per_frame": None}
    cfg["stage"] = {"name": args.stage}
    return cfg


class _SavedBytes:
    """Bytes autograd saves for backward while each top-level component runs (parameters excluded)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.bytes = dict.fromkeys(BENCH_PARTS, 0)
        self.params = {p.data_ptr() for p in model.parameters()}
        self.parts = PartMeter({name: getattr(model, name) for name in BENCH_PARTS}, time.perf_counter)
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if self.parts.active and t.data_ptr() not in self.params:
            self.bytes[self.parts.active[-1]] += t.numel() * t.element_size()
        return t


def measure(frames: int, args: argparse.Namespace) -> dict[str, Any]:
    """One ``T``: build the model, run warm-up + timed training steps, report time and memory."""
    from dynvlm.model.video_llm import VideoLLM
    from dynvlm.records import Sample, Turn

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = VideoLLM(_model_config(args)).to(device)
    size = model.encoder.image_size
    sample = Sample(torch.randint(0, 256, (frames, size, size, 3), dtype=torch.uint8),
                    [float(t) for t in range(frames)],
                    [Turn("human", "<video>\nwhat colour is the video ?"), Turn("gpt", "red")])
    opt = torch.optim.AdamW(model.param_groups(), lr=1e-4)
    plan = model.plan([sample])[0]
    positions = len(model.encode_prompts([sample], [plan])[0].ids)
    saved = _SavedBytes(model)

    def step(record: bool) -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        if record:
            with saved.hooks:
                loss = model([sample])["loss"]
        else:
            loss = model([sample])["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0

    step(record=True)  # warm-up (first steps at a new shape are slower) + activation accounting
    step(record=False)
    reset_peak(device)
    times, cpu = zip(*(step(record=False) for _ in range(args.steps)))
    peak = peak_bytes(device)[0] / 2**20
    act = {k: v / 2**20 for k, v in saved.bytes.items()}
    total = sum(act.values())
    return {
        "frames": frames, "tokens_per_frame": plan.tokens, "visual_tokens": plan.visual_tokens,
        "llm_positions": positions,
        "step_s": statistics.median(times), "cpu_s": statistics.median(cpu), "peak_mib": peak,
        "act_encoder_mib": act["encoder"], "act_compressor_projector_mib": act["compressor"] + act["projector"],
        "act_llm_mib": act["llm"], "llm_share": act["llm"] / total if total else 0.0,
    }


def _child(frames: int, argv: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "dynvlm.measure.model_bench", *argv, "--one", str(frames)]
    # glibc malloc settings must be set before a process starts; on CPU they keep freed
    # activation memory in the heap instead of returning it each step (measured ~2x faster steps)
    env = {**MALLOC_ENV, **os.environ}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"bench for T={frames} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of measured rows."""
    head = ("| T | M | visual tokens | LLM positions | step (s) | CPU (s) | peak (MiB) | act. encoder (MiB) | act. compr.+proj. (MiB) "
            "| act. LLM (MiB) | LLM share |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [
        f"| {r['frames']} | {r['tokens_per_frame']} | {r['visual_tokens']} | {r['llm_positions']} | {r['step_s']:.3f} | {r['cpu_s']:.2f} | {r['peak_mib']:.0f} "
        f"| {r['act_encoder_mib']:.1f} | {r['act_compressor_projector_mib']:.2f} | {r['act_llm_mib']:.1f} "
        f"| {100 * r['llm_share']:.0f}% |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dynvlm bench model``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("dynvlm bench model: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if args.one is not None:
        print(json.dumps(measure(args.one, args)))
        return 0
    rows = [_child(t, argv) for t in args.frames]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        where = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
        print(f"N_max = {args.max_tokens}, device: {args.device} ({where}), torch {torch.__version__}\n")
        print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
