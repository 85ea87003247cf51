"""``bilinear`` compressor: ``F.interpolate`` of the token grid to ``pool``'s ``a x b`` grid."""

import pytest
import torch
import torch.nn.functional as F

import dynvlm
from dynvlm.kernels.pool import pool_shape
from dynvlm.plugins.compressors.bilinear import grid_centres


def _bilinear(**kw):
    return dynvlm.build_component("compressor", {"name": "bilinear", **kw}, dim=7)


@pytest.mark.parametrize("grid,tokens", [((6, 6), 16), ((6, 6), 20), ((4, 7), 12), ((5, 3), 15), ((3, 5), 7), ((6, 6), 3)])
def test_equals_f_interpolate_on_the_token_grid(grid, tokens):
    h, w = grid
    x = torch.randn(3, h * w, 7, generator=torch.Generator().manual_seed(h * w + tokens))
    out = _bilinear()(x, grid, tokens)
    a, b = pool_shape(tokens, grid)
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


def test_the_grid_is_pools_for_every_budget():
    # pool and bilinear at the same M give the same a x b, so they compare at equal token counts
    pool = dynvlm.build_component("compressor", {"name": "pool"}, dim=7)
    for grid in [(4, 4), (3, 5), (2, 8), (24, 24)]:
        for m in range(1, grid[0] * grid[1] + 1):
            assert _bilinear().output_grid(m, grid) == pool.output_grid(m, grid), (grid, m)
    assert _bilinear().output_grid(120, (24, 24)) == (10, 12)
    loose = _bilinear(aspect_tolerance=1.0)  # squares only on a square grid
    assert loose.output_grid(120, (24, 24)) == (10, 10) and loose.achievable(120, (24, 24)) == 100
    with pytest.raises(ValueError, match="aspect_tolerance must be >= 1"):
        _bilinear(aspect_tolerance=0.5)


def test_positions_are_the_sampled_source_points():
    pos = grid_centres((4, 6), (2, 3))
    # rows sample source rows 0.5 and 2.5, columns 0.5, 2.5, 4.5 -> row * 6 + col
    torch.testing.assert_close(pos, torch.tensor([3.5, 5.5, 7.5, 15.5, 17.5, 19.5]))
    out = _bilinear()(torch.randn(1, 24, 7), (4, 6), 6)
    torch.testing.assert_close(out.positions[0], pos)
