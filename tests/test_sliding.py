"""Sliding-window tiles, Gaussian stitching and mirrored TTA as pure numpy (unet_core/recipe/sliding.py)."""
from __future__ import annotations

import numpy as np
import pytest

from unet_core.errors import ConfigError
from unet_core.recipe import sliding
from unet_core.recipe.sliding import TileLayout, extract_tiles, gaussian_map, stitch, tile_starts

SHAPES = [(64, 64), (65, 97), (100, 33), (20, 20), (32, 150), (7, 40)]


@pytest.mark.parametrize("patch", [16, 32])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
def test_tiles_cover_every_pixel_the_last_flush_with_the_border(patch, overlap):
    for n in range(patch, 6 * patch):
        starts = tile_starts(n, patch, overlap)
        assert starts[0] == 0 and starts[-1] == n - patch, (n, starts)  # flush with both borders
        assert (np.diff(starts) > 0).all() and (np.diff(starts) <= (1 - overlap) * patch + 0.5).all(), (n, starts)
        covered = np.zeros(n, bool)
        for s in starts:
            covered[s:s + patch] = True
        assert covered.all()
    with pytest.raises(ConfigError, match="pad it"):
        tile_starts(patch - 1, patch, overlap)


def test_layout_counts_and_pads_a_small_slice_centred():
    layout = TileLayout((20, 70), 32, 0.5)
    assert layout.padded == (32, 70) and layout.offset == (6, 0)
    assert [len(s) for s in layout.starts] == [1, 4] and layout.tiles_per_slice == 4  # 70: 0, 13, 25, 38
    x = np.arange(20 * 70, dtype=np.float32).reshape(1, 20, 70, 1)
    padded = sliding.pad_slices(x, layout, -3.0)
    assert padded.shape == (1, 32, 70, 1)
    assert (padded[0, :6] == -3).all() and (padded[0, 26:] == -3).all()
    np.testing.assert_array_equal(padded[0, 6:26], x[0])


def test_gaussian_map():
    w = gaussian_map(64)
    assert w.shape == (64, 64) and w.dtype == np.float32 and (w > 0).all()
    np.testing.assert_allclose(w, w[::-1], rtol=0) and np.testing.assert_allclose(w, w.T, rtol=0)
    assert w.max() == pytest.approx(1.0, abs=1e-3)  # the centre falls between pixels for an even patch
    w = gaussian_map(65)  # odd: a pixel at the centre, and sigma = 65 / 8 pixels
    assert w[32, 32] == 1.0
    assert w[32, 32 + 8] / w[32, 32] == pytest.approx(np.exp(-0.5 * (8 / 8.125) ** 2), rel=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("overlap", [0.5, 0.25])
def test_stitching_a_constant_prediction_returns_the_constant_at_every_border(shape, overlap):
    layout = TileLayout(shape, 32, overlap)
    constants = np.array([0.25, 0.8, 1e-4], np.float32)
    tiles = np.broadcast_to(constants, (3 * layout.tiles_per_slice, 32, 32, 3)).astype(np.float16)
    out = stitch(tiles, layout)
    assert out.shape == (3, *shape, 3) and out.dtype == np.float32
    borders = [out[:, 0], out[:, -1], out[:, :, 0], out[:, :, -1]]
    for part in [out, *borders]:
        np.testing.assert_allclose(part, np.broadcast_to(constants.astype(np.float16).astype(np.float32), part.shape),
                                   rtol=2e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_tiles_stitched_back_are_the_slices(shape):
    """The identity model: tiles put back where they came from, every pixel, padding cropped."""
    layout = TileLayout(shape, 32, 0.5)
    x = np.random.default_rng(0).random((2, *shape, 2)).astype(np.float32)
    tiles = extract_tiles(x, layout, pad_value=-1.0)
    assert tiles.shape == (2 * layout.tiles_per_slice, 32, 32, 2)
    np.testing.assert_allclose(stitch(tiles, layout), x, rtol=1e-6)
    with pytest.raises(ConfigError, match="do not fit"):
        stitch(tiles[:, :31], layout)


def _shift_model(tiles: np.ndarray) -> np.ndarray:
    """A model that is not flip-equivariant: each output pixel is the input one row above and
    one column to the left (edge repeated), plus a ramp along W."""
    shifted = np.concatenate([tiles[:, :1], tiles[:, :-1]], axis=1)
    shifted = np.concatenate([shifted[:, :, :1], shifted[:, :, :-1]], axis=2)
    return shifted + np.linspace(0, 0.1, tiles.shape[2], dtype=np.float32)[None, None, :, None]


def _pipeline(image: np.ndarray, layout: TileLayout, tta: bool) -> np.ndarray:
    tiles = extract_tiles(image, layout, pad_value=0.0)
    t = layout.tiles_per_slice
    if tta:
        return stitch(sliding.unmirrored_mean(_shift_model(sliding.mirrored(tiles, t)), t), layout)
    return stitch(_shift_model(tiles), layout)


@pytest.mark.parametrize("shape", [(64, 96), (24, 40), (48, 48)])
def test_tta_is_flip_equivariant(shape):
    """With the four mirrors averaged, mirroring the image mirrors the result, whatever the model
    (on a layout symmetric under the flips); without TTA this model is not."""
    layout = TileLayout(shape, 32, 0.5)
    image = np.random.default_rng(1).random((2, *shape, 1)).astype(np.float32)
    out = _pipeline(image, layout, tta=True)
    for axes in ((1,), (2,), (1, 2)):
        np.testing.assert_allclose(_pipeline(np.flip(image, axes), layout, tta=True), np.flip(out, axes), atol=1e-6)
    plain = _pipeline(image, layout, tta=False)
    assert np.abs(_pipeline(np.flip(image, 2), layout, tta=False) - np.flip(plain, 2)).max() > 0.05


def test_mirrored_rows_keep_each_slice_contiguous():
    x = np.random.default_rng(2).random((3 * 2, 8, 8, 1)).astype(np.float32)  # 3 slices of 2 tiles
    m = sliding.mirrored(x, 2)
    assert m.shape == (24, 8, 8, 1)
    np.testing.assert_array_equal(m[8:10], x[2:4])  # slice 1, identity mirror
    np.testing.assert_array_equal(m[10:12], x[2:4, ::-1])  # slice 1, flipped along H
    np.testing.assert_array_equal(m[14:16], x[2:4, ::-1, ::-1])
    np.testing.assert_allclose(sliding.unmirrored_mean(m, 2), x)
    np.testing.assert_allclose(sliding.unmirrored_mean(m[8:16], 2), x[2:4])  # any run of slices
    with pytest.raises(ConfigError, match="whole number"):
        sliding.unmirrored_mean(m[:6], 2)
