"""Exact token accounting: every registered compressor reports the counts it really produces
(``achievable``), and a model's planned visual tokens are the ones it splices and records."""

from __future__ import annotations

import json
import random

import pytest
import pytorch_lightning as pl
import torch
from tiny_vlm import ENCODER, LLM, QUESTION, WORDS, run_config
from torch.utils.data import DataLoader

import dynvlm
from dynvlm.model.video_llm import VideoLLM
from dynvlm.records import Batch, Sample, Turn
from dynvlm.scoring.records import mc_records

NAMES = dynvlm.get_registry().names("compressor")
GRIDS = [(24, 24), (27, 27), (16, 9)]
C = 8


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("grid", GRIDS)
def test_achievable_is_exact_for_every_count(name, grid):
    comp = dynvlm.build_component("compressor", {"name": name}, dim=C).eval()
    n = grid[0] * grid[1]
    keeps_all = comp.keeps_all  # `identity` declares it serves N only
    counts = {}
    for m in range(1, n + 1):
        a = comp.achievable(m, grid)
        counts[m] = a
        if keeps_all:
            assert a == n, (m, a)
        else:
            assert 1 <= a <= m, (m, a)
            assert comp.achievable(a, grid) == a, f"achievable({m}) = {a} is not itself achievable"
    # the forward on a sample of counts (all of them would be slow for the merging compressors)
    rng = random.Random(n)
    sample = sorted({1, n, *rng.sample(range(2, n), 5), *(m for m in (100, 120, 144) if m <= n)})
    x = torch.randn(2, n, C, generator=torch.Generator().manual_seed(n)) + 0.3
    with torch.no_grad():
        for m in sample:
            out = comp(x, grid, counts[m])
            assert out.x.shape == (2, counts[m], C), f"tokens={counts[m]} (asked {m}) gave {tuple(out.x.shape)}"


def test_pool_spends_non_square_budgets():
    pool = dynvlm.build_component("compressor", {"name": "pool"}, dim=C)
    assert [pool.achievable(m, (24, 24)) for m in (100, 120, 144)] == [100, 120, 144]


# ---------------------------------------------------------------------------------------------
# the model: planned == recorded, on a 24x24-grid encoder

GRID_ENCODER = {**ENCODER, "image_size": 48, "patch_size": 2, "num_hidden_layers": 1}  # 24x24 patches
FRAMES = 2  # N_max = 2 * M: the fixed policy keeps two frames of M tokens


def _samples(n: int = 3) -> list[Sample]:
    """Random-pixel videos of 3 frames: two multiple-choice questions and one open-ended one."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        frames = torch.randint(0, 256, (3, 40, 40, 3), generator=g, dtype=torch.uint8)
        meta = {"question_id": f"q{i}", "category": "colour", "duration": 3.0}
        if i < n - 1:
            options = ["red", "green", "blue"]
            conv = [Turn("human", f"<video>\n{QUESTION}\nA. red\nB. green\nC. blue\nanswer with the letter ."),
                    Turn("gpt", "A")]
            meta |= {"options": options, "answer": i % 3, "question": QUESTION}
        else:
            conv = [Turn("human", f"<video>\n{QUESTION}"), Turn("gpt", "red")]
        out.append(Sample(frames, [0.0, 1.0, 2.0], conv, id=f"s{i}", meta=meta))
    return out


def _model(tmp_path, m: int) -> VideoLLM:
    model = {"encoder": {"name": "clip", "config": dict(GRID_ENCODER)},
             "compressor": {"name": "pool"},
             "llm": {"name": "hf", "config": {**LLM, "max_position_embeddings": 1024}, "vocabulary": list(WORDS)}}
    cfg = run_config(tmp_path, model, budget={"max_tokens": FRAMES * m, "policy": {"name": "fixed", "tokens_per_frame": m}},
                     eval={"max_new_tokens": 2})
    torch.manual_seed(0)
    return VideoLLM(cfg).eval()


def _trainer() -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)


@pytest.mark.parametrize("m", [100, 120, 144])
def test_planned_and_recorded_visual_tokens_match(tmp_path, m):
    model = _model(tmp_path, m)
    assert model.encoder.grid == (24, 24)
    samples = _samples()
    plans = model.plan(samples)
    assert [(len(p.indices), p.tokens) for p in plans] == [(FRAMES, m)] * len(samples)  # 120 stays 120 (10x12)
    loader = DataLoader(samples, batch_size=len(samples), collate_fn=Batch)

    model.predictions_path = tmp_path / "predictions.jsonl"
    metrics = _trainer().test(model, dataloaders=loader, verbose=False)[0]
    assert metrics["test/tokens/planned"] == metrics["test/tokens/actual"] == FRAMES * m
    records = [json.loads(line) for line in model.predictions_path.read_text().splitlines()]
    assert sorted(r["kind"] for r in records) == ["mc", "mc", "open"]
    assert all(r["planned_tokens"] == r["actual_tokens"] == FRAMES * m for r in records)

    metrics = _trainer().validate(model, dataloaders=loader, verbose=False)[0]
    assert metrics["val/tokens/planned"] == metrics["val/tokens/actual"] == FRAMES * m


def test_actual_tokens_are_measured_not_copied_from_the_plan(tmp_path):
    """The actual count is the visual positions each sample's spliced prompt really holds: a
    sample planned at fewer frames is recorded with its own count, and a prompt that disagrees
    with the plan shows up as a mismatch."""
    model = _model(tmp_path, 120)
    samples = _samples()
    short = Sample(samples[0].frames[:1], [0.0], samples[0].conversation, id="short", meta=dict(samples[0].meta))
    batch = [short, *samples[:2]]
    plans = model.plan(batch)
    with torch.no_grad():
        visual, _, usage = model.visual_features(batch, plans)
    assert [v.shape[0] for v in visual] == [120, 240, 240]
    counts = lambda: [(u.planned_tokens, u.actual_tokens) for u in usage]  # noqa: E731
    assert counts() == [(120, 0), (240, 0), (240, 0)]  # nothing spliced yet
    # prompts built for the wrong plans (rows 0 and 1 swapped): the totals agree, so the splice
    # goes through, but each row holds the other's count of visual positions
    swapped = model.prompts.collate(model.encode_prompts([batch[1], batch[0], batch[2]],
                                                         [plans[1], plans[0], plans[2]]), "right")
    with torch.no_grad():
        model.splice(swapped, visual, usage=usage)
    assert counts() == [(120, 240), (240, 120), (240, 240)]
    with torch.no_grad():
        model.splice(model.prompts.collate(model.encode_prompts(batch, plans), "right"), visual, usage=usage)
    assert counts() == [(120, 120), (240, 240), (240, 240)]
    with torch.no_grad():
        records = mc_records(model, batch, model.eval_cfg.mode)
    assert [(r["planned_tokens"], r["actual_tokens"]) for r in records] == [(120, 120), (240, 240), (240, 240)]
