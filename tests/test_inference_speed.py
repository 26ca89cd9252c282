"""The native recipe's fast paths give the very numbers of the plain formulas: tiles cut straight to
float16 into the volume's rows, stitching through one reused buffer with the weights computed once
per layout, finishing a few slices at a time; and the stage timers that `unet bench segment` reads."""
from __future__ import annotations

import numpy as np
import pytest

from unet_core.config import PreprocessConfig
from unet_core.inference import (
    CACHE_SLICES,
    INPUT_SLICES,
    PostProcess,
    StageSeconds,
    finish_slices,
    finish_volume,
    iter_model_input,
    prepare_volume,
    sliding_plan,
)
from unet_core.recipe import sliding
from unet_core.recipe.resample import resample_slices
from unet_core.volume import Volume


def _reference_tiles(x: np.ndarray, layout: sliding.TileLayout, pad: np.ndarray) -> np.ndarray:
    """Tiles by fancy indexing of all windows, then one astype: the formula before the fast path."""
    padded = sliding.pad_slices(x, layout, pad)
    si, sj = layout.starts
    p = layout.patch
    win = np.lib.stride_tricks.sliding_window_view(padded, (p, p), axis=(1, 2))
    tiles = np.moveaxis(win[:, si[:, None], sj[None, :]], 3, -1)
    return np.ascontiguousarray(tiles).reshape(-1, p, p, x.shape[3])


def _reference_stitch(tiles: np.ndarray, layout: sliding.TileLayout) -> np.ndarray:
    p, t = layout.patch, layout.tiles_per_slice
    n, k = tiles.shape[0] // t, tiles.shape[3]
    w = sliding.gaussian_map(p)
    si, sj = layout.starts
    positions = [(int(i), int(j)) for i in si for j in sj]
    norm = np.zeros(layout.padded, np.float32)
    for i, j in positions:
        norm[i:i + p, j:j + p] += w
    acc = np.zeros((n, *layout.padded, k), np.float32)
    grid = tiles.reshape(n, t, p, p, k)
    for a, (i, j) in enumerate(positions):
        acc[:, i:i + p, j:j + p] += grid[:, a].astype(np.float32) * (w / norm[i:i + p, j:j + p])[None, :, :, None]
    (oi, oj), (h, wd) = layout.offset, layout.shape
    return acc[:, oi:oi + h, oj:oj + wd]


@pytest.mark.parametrize("shape", [(70, 90), (20, 50), (64, 64)])
def test_tiles_cut_to_float16_into_a_buffer_are_the_plain_formulas_cast(shape):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 3, (3, *shape, 2)).astype(np.float32)
    layout = sliding.TileLayout(shape, 32, 0.5)
    pad = x.min(axis=(1, 2, 3))
    want = _reference_tiles(x, layout, pad)
    np.testing.assert_array_equal(sliding.extract_tiles(x, layout, pad), want)
    rows = np.full((len(want) + 4, 32, 32, 2), np.float16(7))
    got = sliding.extract_tiles(x, layout, pad, np.float16, out=rows[2:-2])
    assert got.dtype == np.float16 and np.shares_memory(got, rows)
    np.testing.assert_array_equal(got, want.astype(np.float16))
    assert (rows[:2] == 7).all() and (rows[-2:] == 7).all()  # nothing written outside its rows
    with pytest.raises(Exception, match="does not fit"):
        sliding.extract_tiles(x, layout, pad, np.float16, out=rows)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_stitching_gives_the_plain_formulas_numbers_bit_for_bit(dtype):
    layout = sliding.TileLayout((90, 70), 32, 0.5)
    tiles = np.random.default_rng(2).random((2 * layout.tiles_per_slice, 32, 32, 3)).astype(dtype)
    got = sliding.stitch(tiles, layout)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _reference_stitch(tiles, layout))


def test_the_tile_weights_are_computed_once_per_layout():
    layout = sliding.TileLayout((123, 77), 32, 0.5)
    sliding._tile_weights.cache_clear()
    tiles = np.ones((2 * layout.tiles_per_slice, 32, 32, 1), np.float16)
    for _ in range(3):
        sliding.stitch(tiles, layout)
    info = sliding._tile_weights.cache_info()
    assert info.misses == 1 and info.hits == 2
    with pytest.raises(ValueError):  # shared between calls: nobody may change them
        sliding._tile_weights(layout)[0][1][0, 0] = 0


def _volume(n: int) -> Volume:
    voxels = np.random.default_rng(3).normal(0, 300, (60, 52, n)).astype(np.float32)
    return Volume(voxels, np.diag([0.7, 0.8, 2.5, 1.0]), "v")


NATIVE = PreprocessConfig(input_size=32, recipe="native", target_spacing=0.9, window_lower=-200.0,
                          window_upper=300.0, window=None)


def _model(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x[..., :1].astype(np.float32) * 3 + 1.5))).astype(np.float16)


@pytest.mark.parametrize("tta", [False, True])
def test_finishing_a_few_slices_at_a_time_gives_the_whole_runs_labels(tta):
    volume = _volume(2 * CACHE_SLICES + 3)  # runs of CACHE_SLICES and a ragged one
    plan = sliding_plan(volume, NATIVE, tta)
    prob = _model(prepare_volume(volume, NATIVE, tta))
    tiles = sliding.unmirrored_mean(prob, plan.layout.tiles_per_slice) if tta else prob
    whole = (resample_slices(_reference_stitch(tiles, plan.layout), plan.source)[..., 0] > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(finish_slices(prob, plan, 0.5), np.moveaxis(whole, 0, 2))


@pytest.mark.parametrize("recipe", ["seed", "native"])
def test_stage_seconds_time_every_step_and_change_nothing(recipe):
    volume = _volume(5)
    pre = NATIVE if recipe == "native" else PreprocessConfig(input_size=32)
    seconds = StageSeconds()
    x = prepare_volume(volume, pre, seconds=seconds)
    np.testing.assert_array_equal(x, prepare_volume(volume, pre))
    np.testing.assert_array_equal(np.concatenate([r for _, r in iter_model_input(volume, pre, max_rows=7)]), x)
    if recipe == "native":  # made INPUT_SLICES at a time within a run: the same rows as one slice at a time
        big = _volume(INPUT_SLICES + 3)
        one_by_one = [r for _, r in iter_model_input(big, pre, tta=True, max_rows=1)]
        np.testing.assert_array_equal(np.concatenate(one_by_one), prepare_volume(big, pre, tta=True))
    labels = finish_volume(_model(x), volume, 0.5, PostProcess(), preprocess=pre, seconds=seconds)
    np.testing.assert_array_equal(labels, finish_volume(_model(x), volume, 0.5, PostProcess(), preprocess=pre))
    assert labels.any() and not labels.all()
    assert seconds.preprocess > 0 and seconds.resample_back > 0 and seconds.labels > 0
    assert (seconds.stitch > 0) == (recipe == "native")
