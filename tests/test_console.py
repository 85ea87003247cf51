"""dynvlm.run.console: a sweep run from the command line prints a progress bar and one line per point;
what the libraries say goes to the run's log file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from tiny_vlm import ENCODER, LLM

from dynvlm.data.synth import vocabulary

SYNTH = dict(seed=0, train=4, val=0, test=2, size=16, min_duration=12, max_duration=14, max_visits=2, max_visit_seconds=3)


def test_a_sweep_prints_one_line_per_point_and_logs_the_rest(tmp_path):
    cfg = {
        "name": "quiet", "output_dir": str(tmp_path / "runs" / ".." / "runs"),
        "model": {"encoder": {"name": "clip", "config": dict(ENCODER)}, "compressor": {"name": "pool"},
                  "llm": {"name": "hf", "config": dict(LLM), "vocabulary": vocabulary(max_duration=14, options=4)}},
        "budget": {"max_tokens": 36, "max_frames": 8},
        "data": {"synth": {"out": str(tmp_path / "synth"), **SYNTH}, "batch_size": 2},
        "trainer": {"accelerator": "cpu", "max_steps": 2, "limit_val_batches": 0, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False},
        "sweep": {"budget.tokens_per_frame": [1, 4]},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "dynvlm", "run", str(path)], capture_output=True, text=True,
                          timeout=900, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # lines as a terminal shows them: progress bars redraw in place (carriage returns), not new lines
    console = [line.rsplit("\r", 1)[-1] for line in (proc.stdout + proc.stderr).split("\n")]
    points = [line for line in console if "accuracy" in line and line.startswith("tokens_per_frame=")]
    assert len(points) == 2, console
    assert len(console) < 40, "\n".join(console)  # the JSON summary, two point lines, a bar, the log's path
    noise = ("GPU available", "Tip:", "LOAD REPORT", "Test metric", "modules in eval mode", "weights_only")
    assert not [line for line in console if any(n in line for n in noise)], "\n".join(console)
    assert "/../" not in proc.stdout  # paths are printed normalised
    log = Path(tmp_path / "runs" / "quiet" / "run.log").read_text()
    assert "GPU available" in log  # Lightning's info lines went to the log file
    assert "runs/quiet/run.log" in proc.stderr
