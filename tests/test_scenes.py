"""dynvlm.data.scenes: glyph shapes are the same in every process (the clips' bytes depend on them)."""

from __future__ import annotations

import numpy as np

from dynvlm.data import scenes


def test_pixel_distances_are_exact_whatever_the_memory_layout():
    for g in range(2, 40):
        yy, xx = np.mgrid[0:g, 0:g] + 0.5
        d = scenes._distance(xx - g / 2, yy - g / 2)
        # (2x)^2 + (2y)^2 in integers: the exact squared distance, times 4
        exact = (2 * xx - g).astype(np.int64) ** 2 + (2 * yy - g).astype(np.int64) ** 2
        assert np.array_equal(np.rint((2 * d) ** 2).astype(np.int64), exact)
        # an unaligned, strided copy of the same offsets gives the same bits (np.hypot did not)
        buf = np.empty(2 * g * g + 1)
        dx = buf[1 : 1 + 2 * g * g : 2].reshape(g, g)
        dx[:] = xx - g / 2
        assert np.array_equal(scenes._distance(dx, yy - g / 2), d)


def test_glyph_masks_have_equal_areas():
    for g in range(4, 20):
        areas = {shape: int(scenes.glyph_mask(shape, g, True).sum()) for shape in scenes.SHAPES}
        assert set(areas.values()) == {4 * g - 4}, (g, areas)
