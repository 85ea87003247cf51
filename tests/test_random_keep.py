"""``random`` compressor: a uniform random subset of ``tokens`` tokens per frame, in source order."""

import torch

import dynvlm
from dynvlm.plugins.compressors.random_keep import RandomKeep

GRID = (4, 6)
N = 24


def _random(seed=0):
    return dynvlm.build_component("compressor", {"name": "random", "seed": seed}, dim=5)


def _x(frames=3):
    return torch.randn(frames, N, 5, generator=torch.Generator().manual_seed(3))


def _check_gathered(x, out, tokens):
    kept = out.positions
    assert kept.dtype == torch.int64 and kept.shape == (x.shape[0], tokens)
    assert bool((kept[:, 1:] > kept[:, :-1]).all())  # strictly increasing: source order, no repeats
    assert torch.equal(out.x, torch.stack([x[f, kept[f]] for f in range(x.shape[0])]))


def test_keeps_exactly_tokens_in_source_order():
    x = _x()
    for training in (False, True):
        comp = _random().train(training)
        for tokens in (1, 7, 23, N):
            out = comp(x, GRID, tokens)
            _check_gathered(x, out, tokens)
    assert torch.equal(_random().eval()(x, GRID, N).x, x)  # all tokens kept = the input


def test_eval_is_seeded_and_the_same_for_every_frame_and_batch():
    x = _x()
    a, b = _random(5).eval(), _random(5).eval()
    out = a(x, GRID, 9)
    assert torch.equal(out.positions, b(x, GRID, 9).positions)  # a fresh module, same seed: same tokens
    assert torch.equal(out.positions, a(x, GRID, 9).positions)  # and the same on a second call
    assert bool((out.positions == out.positions[:1]).all())
    # one frame alone keeps what it kept inside the batch
    assert torch.equal(a(x[2:], GRID, 9).positions[0], out.positions[2])


def test_different_seeds_keep_different_tokens():
    x = _x()
    kept = {tuple(_random(seed).eval()(x, GRID, 8).positions[0].tolist()) for seed in range(6)}
    assert len(kept) > 1


def test_training_draws_fresh_subsets_reproducibly_from_the_seed():
    x = _x(frames=4)
    a, b = _random(1).train(), _random(1).train()
    first, second = a(x, GRID, 6).positions, a(x, GRID, 6).positions
    assert not torch.equal(first, second)  # the generator advances between calls
    assert len({tuple(r.tolist()) for r in first}) > 1  # and frames differ within a call
    assert torch.equal(b(x, GRID, 6).positions, first)  # same seed, same stream


def test_subsets_are_uniform():
    # every token is kept with probability tokens/N: counts over many training draws stay near it
    comp = RandomKeep(dim=5, seed=2).train()
    x = torch.randn(200, N, 5)
    counts = torch.zeros(N)
    for _ in range(10):
        counts += torch.bincount(comp(x, GRID, 6).positions.reshape(-1), minlength=N)
    expected = 2000 * 6 / N  # 500 per token; binomial sd about 19
    assert bool(((counts - expected).abs() < 100).all()), counts
