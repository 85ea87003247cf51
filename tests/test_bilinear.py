"""``bilinear`` compressor and its grid rule :func:`fit_grid` (shared with the encoders' downsample option)."""

import math

import pytest
import torch
import torch.nn.functional as F

import dynvlm
from dynvlm.plugins.compressors.bilinear import fit_grid, grid_centres


def _bilinear(**kw):
    return dynvlm.build_component("compressor", {"name": "bilinear", **kw}, dim=7)


@pytest.mark.parametrize("grid,tokens", [((6, 6), 16), ((6, 6), 20), ((4, 7), 12), ((5, 3), 15), ((3, 5), 7)])
def test_equals_f_interpolate_on_the_token_grid(grid, tokens):
    h, w = grid
    x = torch.randn(3, h * w, 7, generator=torch.Generator().manual_seed(h * w + tokens))
    out = _bilinear()(x, grid, tokens)
    a, b = fit_grid(tokens, grid)
    ref = F.interpolate(x.transpose(1, 2).reshape(3, 7, h, w), size=(a, b), mode="bilinear", align_corners=False)
    assert out.x.shape == (3, a * b, 7)
    torch.testing.assert_close(out.x, ref.reshape(3, 7, a * b).transpose(1, 2))


def test_antialias_option_is_passed_on():
    x = torch.randn(2, 64, 7, generator=torch.Generator().manual_seed(0))
    out = _bilinear(antialias=True)(x, (8, 8), 4)
    ref = F.interpolate(x.transpose(1, 2).reshape(2, 7, 8, 8), size=(2, 2), mode="bilinear", antialias=True)
    torch.testing.assert_close(out.x, ref.reshape(2, 7, 4).transpose(1, 2))
    assert not torch.allclose(out.x, _bilinear()(x, (8, 8), 4).x)


def test_a_constant_grid_stays_constant():
    value = torch.randn(2, 1, 7, generator=torch.Generator().manual_seed(1))
    x = value.expand(2, 35, 7).contiguous()
    for tokens in (1, 6, 20, 35):
        out = _bilinear()(x, (5, 7), tokens)
        torch.testing.assert_close(out.x, value.expand_as(out.x))


def test_half_precision_is_resized_in_float32():
    x = torch.randn(2, 36, 7, generator=torch.Generator().manual_seed(2)).bfloat16()
    out = _bilinear()(x, (6, 6), 9)
    assert out.x.dtype == torch.bfloat16
    ref = _bilinear()(x.float(), (6, 6), 9).x.bfloat16()
    assert torch.equal(out.x, ref)


def test_fit_grid_keeps_the_aspect_and_never_exceeds_the_budget():
    assert fit_grid(576, (24, 24)) == (24, 24)
    assert fit_grid(23, (24, 24)) == (4, 4)  # not a 1x23 strip
    assert fit_grid(12, (4, 4)) == (3, 3)
    assert fit_grid(14, (3, 5)) == (3, 4)
    assert fit_grid(100, (3, 5)) == (3, 5)  # never upsamples
    for h, w in [(24, 24), (3, 5), (2, 8), (27, 13), (1, 9)]:
        for m in range(1, h * w + 1):
            a, b = fit_grid(m, (h, w))
            assert 1 <= a <= h and 1 <= b <= w and a * b <= m
            # aspect within one cell: a is the floor or ceil of b*h/w, or b of a*w/h
            assert a in (math.floor(b * h / w), math.ceil(b * h / w), 1) or b in (
                math.floor(a * w / h), math.ceil(a * w / h), 1)
    # square grids give pool's counts
    assert all(math.prod(fit_grid(m, (24, 24))) == math.isqrt(m) ** 2 for m in range(1, 577))


def test_positions_are_the_sampled_source_points():
    pos = grid_centres((4, 6), (2, 3))
    # rows sample source rows 0.5 and 2.5, columns 0.5, 2.5, 4.5 -> row * 6 + col
    torch.testing.assert_close(pos, torch.tensor([3.5, 5.5, 7.5, 15.5, 17.5, 19.5]))
    out = _bilinear()(torch.randn(1, 24, 7), (4, 6), 6)
    torch.testing.assert_close(out.positions[0], pos)
