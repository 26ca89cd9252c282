"""Sliding-window inference of the native recipe on real DICOM series, through prepare_volume ->
model -> finish_volume. The model is a known pointwise function of its input, so the labels that
land on the source grid can be checked exactly against the function applied voxel by voxel, and
against the seed recipe's masks where both resample the same way."""
from __future__ import annotations

import os

import numpy as np
import pytest

from support.dicom_factory import write_series
from unet_core.config import PreprocessConfig
from unet_core.evaluation import dice
from unet_core.inference import (
    PostProcess,
    finish_slices,
    finish_volume,
    iter_model_input,
    labels_to_source,
    prepare_volume,
    segment_in_runs,
    sliding_plan,
)
from unet_core.io import read_volume
from unet_core.preprocessing import normalise
from unet_core.synthetic import TARGET, SeriesSpec

# 40 x 40 x 40 voxels of 6 mm: every orientation's canonical axial slices are 40 x 40 at 6 mm.
CUBE = {"rows": 40, "columns": 40, "n_slices": 40, "slice_step": 6.0}
GEOMETRIES = {
    "axial": SeriesSpec(**CUBE),
    "axial-descending": SeriesSpec(**CUBE, descending=True),
    "coronal": SeriesSpec(orientation="coronal", **CUBE),
    "sagittal-descending": SeriesSpec(orientation="sagittal", **CUBE, descending=True),
    "oblique": SeriesSpec(orientation="oblique", **CUBE),
    "axial-flipped-rows": SeriesSpec(**CUBE, flip_rows=True),
    "oblique-anisotropic": SeriesSpec(orientation="oblique", rows=36, columns=44, n_slices=5, flip_rows=True,
                                      descending=True, pixel_spacing=(5.5, 6.5)),
}
WINDOW = {"window": None, "window_lower": 0.0, "window_upper": 200.0}  # tissue (40 HU) 0.2, the organ 0.55


def band_model(x: np.ndarray) -> np.ndarray:
    """Pointwise: about 0.83 where the windowed input is above 0.15, about 0.11 elsewhere (never
    near the threshold, so equal inputs give equal labels whatever the float rounding)."""
    v = x[..., :1].astype(np.float32)
    return (np.where(v > 0.15, np.float32(0.8), np.float32(0.1)) + np.float32(0.05) * v).astype(np.float16)


def smooth_model(x: np.ndarray) -> np.ndarray:
    v = x[..., :1].astype(np.float32)
    return (1.0 / (1.0 + np.exp(-10.0 * (v - 0.15)))).astype(np.float16)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    root = tmp_path_factory.mktemp("series")
    out = {}
    for name, spec in GEOMETRIES.items():
        write_series(os.path.join(root, name), spec)
        out[name] = read_volume(os.path.join(root, name))
    return out


def _native(**kw) -> PreprocessConfig:
    return PreprocessConfig(recipe="native", **{"input_size": 16, **WINDOW, **kw})


def _segment(volume, pre: PreprocessConfig, model=band_model, tta: bool = False, post=PostProcess()) -> np.ndarray:
    x = prepare_volume(volume, pre, tta=tta)
    assert x.dtype == np.float16 and x.shape == (sliding_plan(volume, pre, tta).rows, pre.input_size,
                                                 pre.input_size, pre.channels)
    return finish_volume(model(x), volume, 0.5, post, preprocess=pre, tta=tta)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_native_labels_land_on_the_source_grid_voxel_for_voxel(volumes, name):
    """At each image's own spacing, tiles of 16 over 36-44 pixel slices (3-5 tiles an axis, the
    last flush): the labels are the model's function of each source voxel, on the source grid."""
    volume = volumes[name]
    pre = _native(target_spacing=None)
    # The model's input is float16 (as prepare_volume gives it).
    expected = (band_model(normalise(volume.voxels, pre).astype(np.float16)[..., None])[..., 0] > 0.5).astype(np.uint8)
    assert 0.05 < expected.mean() < 0.95
    labels = _segment(volume, pre)
    assert labels.shape == volume.shape and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(_segment(volume, pre, tta=True), expected)  # a pointwise model: TTA changes nothing


@pytest.mark.parametrize("name", ["axial", "axial-descending", "coronal", "sagittal-descending", "oblique",
                                  "axial-flipped-rows"])
def test_native_resampling_gives_the_seed_recipes_masks_where_both_resample_alike(volumes, name):
    """40 x 40 slices of 6 mm taken to 10 mm are 24 x 24, as the seed recipe's input size 24: with a
    patch of 32 (one tile, padded) both resample the same way there and back, so the masks agree
    voxel for voxel, in every orientation."""
    volume = volumes[name]
    native = _native(target_spacing=10.0, input_size=32)
    assert sliding_plan(volume, native).target == (24, 24)
    seed = PreprocessConfig(input_size=24, **WINDOW)
    want = finish_volume(smooth_model(prepare_volume(volume, seed)), volume, 0.5, PostProcess())
    assert 0.05 < want.mean() < 0.95
    np.testing.assert_array_equal(_segment(volume, native, smooth_model), want)


@pytest.mark.parametrize("target", [3.0, 8.5])
def test_native_at_another_spacing_follows_the_anatomy(tmp_path, target):
    """Finer and coarser than the source (5.5 x 6.5 mm, oblique): with a model of the organ's
    intensity band, the labels resampled back as probabilities are the phantom's organ."""
    _, _, truth = write_series(tmp_path / "s", GEOMETRIES["oblique-anisotropic"])
    volume = read_volume(str(tmp_path / "s"))
    organ = truth == TARGET
    assert organ.mean() > 0.02

    def organ_model(x: np.ndarray) -> np.ndarray:
        v = x[..., :1].astype(np.float32)  # the organ at 0.55, tissue 0.2, bone 1
        return (1.0 / (1.0 + np.exp(-20.0 * (v - 0.4))) / (1.0 + np.exp(-20.0 * (0.75 - v)))).astype(np.float16)

    native = _segment(volume, _native(target_spacing=target), organ_model)
    at_source = _segment(volume, _native(target_spacing=None), organ_model)
    assert dice(at_source, organ) > 0.99
    assert dice(native, organ) > 0.9, dice(native, organ)


def test_runs_of_slices_give_the_whole_volumes_labels(volumes):
    """The chunked interface (what a stage that must hold one run at a time calls) gives the same
    rows and labels as prepare_volume + finish_volume, with context slices and TTA."""
    volume = volumes["oblique-anisotropic"]
    pre = _native(target_spacing=4.0, context_slices=1)
    plan = sliding_plan(volume, pre, tta=True)
    assert plan.rows_per_slice == 4 * plan.layout.tiles_per_slice and plan.layout.tiles_per_slice > 1
    whole = prepare_volume(volume, pre, tta=True)
    labels = np.empty((*plan.source, plan.n_slices), np.uint8)
    rows = []
    for ks, x in iter_model_input(volume, pre, tta=True, max_rows=2 * plan.rows_per_slice):
        assert len(ks) <= 2 and len(x) == len(ks) * plan.rows_per_slice
        rows.append(x)
        labels[:, :, ks.start:ks.stop] = finish_slices(smooth_model(x), plan, 0.5)
    np.testing.assert_array_equal(np.concatenate(rows), whole)
    post = PostProcess(largest_component=True)
    want = finish_volume(smooth_model(whole), volume, 0.5, post, preprocess=pre, tta=True)
    np.testing.assert_array_equal(labels_to_source(labels, volume, post), want)
    calls = []

    def predict(x):
        calls.append(len(x))
        return smooth_model(x)

    np.testing.assert_array_equal(segment_in_runs(volume, pre, predict, 0.5, post, tta=True, max_rows=2 * plan.rows_per_slice),
                                  want)
    assert len(calls) == 3 and max(calls) == 2 * plan.rows_per_slice  # 5 slices in runs of 2


def test_small_slices_are_padded_with_the_background_and_cropped_back(volumes):
    """36 x 44 slices at 7 mm are smaller than a 64 patch: one tile each, padded, centred, with the
    normalised value of the slice's minimum, and the labels cropped back to the source grid."""
    volume = volumes["oblique-anisotropic"]
    pre = _native(target_spacing=7.0, input_size=64)
    plan = sliding_plan(volume, pre)
    assert plan.layout.tiles_per_slice == 1 and max(plan.target) < 64
    x = prepare_volume(volume, pre).astype(np.float32)
    (oi, oj), (h, w) = plan.layout.offset, plan.target
    inside = x[:, oi:oi + h, oj:oj + w]
    assert (x[:, :oi] == inside.min(axis=(1, 2, 3))[:, None, None, None]).all()
    assert (x[:, oi + h:] == inside.min(axis=(1, 2, 3))[:, None, None, None]).all()
    assert _segment(volume, pre, smooth_model).shape == volume.shape


def test_rows_that_do_not_fit_the_volume_are_refused(volumes):
    volume = volumes["axial"]
    pre = _native()
    x = prepare_volume(volume, pre)
    with pytest.raises(ValueError, match="do not fit"):
        finish_volume(band_model(x[1:]), volume, 0.5, PostProcess(), preprocess=pre)


def test_tta_with_the_seed_recipe_averages_the_mirrored_slices(volumes):
    """--tta applies to the seed recipe too: four mirrored rows a slice, flipped back and averaged.
    A pointwise model gives the plain labels; a model that shifts its input gives the labels of
    the mean of its four mirrored versions, not its own."""
    volume = volumes["oblique"]
    seed = PreprocessConfig(input_size=32, **WINDOW)
    plain = finish_volume(smooth_model(prepare_volume(volume, seed)), volume, 0.5, PostProcess())
    x = prepare_volume(volume, seed, tta=True)
    assert len(x) == 4 * volume.shape[2]
    np.testing.assert_array_equal(finish_volume(smooth_model(x), volume, 0.5, PostProcess(), preprocess=seed, tta=True),
                                  plain)

    def shifted(rows):
        return smooth_model(np.roll(rows, 3, axis=2))

    def symmetrised(rows):  # the mean of the mirrors of the shifted model, as TTA should give it
        out = np.zeros(rows.shape, np.float32)
        for axes in ((), (1,), (2,), (1, 2)):
            out += np.flip(shifted(np.flip(rows, axes)), axes)
        return out / np.float32(4)

    rows = prepare_volume(volume, seed)
    with_tta = finish_volume(shifted(x), volume, 0.5, PostProcess(), preprocess=seed, tta=True)
    np.testing.assert_array_equal(with_tta, finish_volume(symmetrised(rows), volume, 0.5, PostProcess()))
    assert (with_tta != finish_volume(shifted(rows), volume, 0.5, PostProcess())).any()
