"""The inference pieces as plain Python, with no Ray running."""
from __future__ import annotations

import numpy as np
import pytest

from unet_core.bundle import BundleInfo, load_bundle, package_model, save_bundle
from unet_core.config import ModelConfig, PreprocessConfig
from unet_core.errors import ConfigError, InputError
from unet_core.evaluation import dice, evaluate_masks, hausdorff95, iou
from unet_core.inference import (
    PostProcess,
    SlicePredictor,
    finish_volume,
    postprocess,
    prepare_volume,
    volume_stats,
)
from unet_core.model import build_unet
from unet_core.volume import Volume

CFG = ModelConfig(input_size=32, base_filters=4, depth=2)
PRE = PreprocessConfig(input_size=32)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("b") / "bundle")
    save_bundle(path, build_unet(CFG), BundleInfo(preprocess=PRE, model=CFG, label_names=["background", "organ"]))
    return path


def test_predictor_is_a_callable_on_plain_dicts(bundle):
    predictor = SlicePredictor(bundle, batch_size=4)
    x = np.random.default_rng(0).random((7, 32, 32, 1)).astype(np.float16)
    out = predictor({"volume_id": ["a", "b"], "x": [x, x[:2]]})
    assert [p.shape for p in out["prob"]] == [(7, 32, 32, 1), (2, 32, 32, 1)]
    np.testing.assert_allclose(out["prob"][1], out["prob"][0][:2], atol=1e-3)  # padding does not leak
    model, _ = load_bundle(bundle)
    np.testing.assert_allclose(out["prob"][0], model.predict(x.astype(np.float32), verbose=0), atol=2e-3)


@pytest.mark.parametrize("perm, flips", [((0, 1, 2), (1, 1, 1)), ((2, 0, 1), (-1, 1, 1)), ((1, 2, 0), (1, -1, -1))])
def test_finish_volume_returns_exactly_to_the_source_grid(perm, flips):
    affine = np.eye(4)
    affine[:3, :3] = np.eye(3)[:, perm] * np.array(flips, float) * 2.0
    shape = (20, 24, 12)
    volume = Volume(np.zeros(shape, np.float32), affine, "v")
    truth = np.zeros(shape, np.uint8)
    truth[3:15, 5:20, 2:9] = 1
    # Probabilities of the truth on the canonical grid at the model's size, as a model would give.
    from unet_core.io.orientation import to_canonical
    from unet_core.preprocessing import resize_nearest

    canonical, _ = to_canonical(truth, affine)
    prob = resize_nearest(np.moveaxis(canonical, 2, 0), (32, 32)).astype(np.float16)[..., None]
    labels = finish_volume(prob, volume, 0.5, PostProcess())
    assert labels.shape == shape
    assert dice(labels, truth) > 0.95
    assert prepare_volume(volume, PRE).shape == (canonical.shape[2], 32, 32, 1)


def test_postprocess_largest_component_and_holes():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:12, 2:12, 2:12] = 1
    labels[5:8, 5:8, 5:8] = 0  # a hole
    labels[15:17, 15:17, 15:17] = 1  # a speck
    out = postprocess(labels, PostProcess(largest_component=True, fill_holes=True))
    assert out[16, 16, 16] == 0 and out[6, 6, 6] == 1 and out.sum() == 1000


def test_volume_stats():
    vol = Volume(np.full((4, 4, 4), 50.0, np.float32), np.diag([2.0, 2.0, 2.5, 1.0]), "v", modality="CT")
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[:2] = 1
    s = volume_stats(labels, vol)
    assert s["mask_voxels"] == 32 and s["mask_volume_ml"] == pytest.approx(32 * 10 / 1000) and s["mean_hu_in_mask"] == 50


def test_metrics_on_known_shapes():
    a = np.zeros((30, 30, 30), bool)
    b = np.zeros_like(a)
    a[5:15, 5:15, 5:15] = True
    b[7:17, 5:15, 5:15] = True  # shifted by 2 voxels along i
    assert dice(a, b) == pytest.approx(2 * 800 / 2000)
    assert iou(a, b) == pytest.approx(800 / 1200)
    assert hausdorff95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert hausdorff95(a, b, (3.0, 1.0, 1.0)) == pytest.approx(6.0)  # spacing in mm
    empty = np.zeros_like(a)
    assert evaluate_masks(empty, empty, (1, 1, 1))["dice"] == 1.0
    assert np.isnan(evaluate_masks(a, empty, (1, 1, 1))["hd95_mm"])


def test_bundle_checks_and_packaging(tmp_path, bundle):
    with pytest.raises(ConfigError, match=r"does not fit the bundle's preprocessing"):
        save_bundle(str(tmp_path / "x"), build_unet(CFG), BundleInfo(preprocess=PreprocessConfig(input_size=64)))
    with pytest.raises(InputError, match="not a model bundle"):
        load_bundle(str(tmp_path))
    model, _ = load_bundle(bundle)
    model.save(tmp_path / "mine.keras")
    package_model(str(tmp_path / "mine.keras"), str(tmp_path / "mine"), PRE, threshold=0.4)
    loaded, info2 = load_bundle(str(tmp_path / "mine"))
    assert info2.threshold == 0.4 and info2.model is None and info2.label_names == ["background", "foreground"]


# Agreement of mixed-precision probabilities with float32 on the same input (probabilities in
# [0, 1]; float16 keeps 11 significant bits, bfloat16 8).
TOLERANCE = {"mixed_float16": 0.01, "mixed_bfloat16": 0.04}


@pytest.mark.parametrize("precision", sorted(TOLERANCE))
def test_precision_takes_effect_on_a_loaded_bundle(tmp_path, precision):
    """A bundle saved in float32 is rebuilt under the policy: every Conv2D and BatchNormalization
    computes in it with float32 variables, the head stays float32, and the probabilities agree
    with float32. The global policy is left alone."""
    import keras

    from unet_core.model.precision import compute_dtypes

    cfg = ModelConfig(input_size=32, base_filters=8, depth=2, batch_norm=True, dropout=0.0)
    keras.utils.set_random_seed(1)
    path = str(tmp_path / "bn")
    save_bundle(path, build_unet(cfg), BundleInfo(preprocess=PRE, model=cfg))
    reference = SlicePredictor(path, batch_size=8)
    mixed = SlicePredictor(path, batch_size=8, precision=precision)
    dtype = precision.split("_")[1]
    layers = {layer.name: layer for layer in mixed.model.layers}
    convs = [n for n, layer in layers.items() if isinstance(layer, (keras.layers.Conv2D, keras.layers.BatchNormalization))]
    assert len(convs) > 10
    dtypes = compute_dtypes(mixed.model)
    assert {n: dtypes[n] for n in convs if n != "head"} == {n: dtype for n in convs if n != "head"}
    assert dtypes["head"] == "float32" and mixed.model.output.dtype == "float32"
    assert all(w.dtype == "float32" for w in mixed.model.weights)
    assert set(compute_dtypes(reference.model).values()) == {"float32"}
    assert keras.mixed_precision.global_policy().name == "float32"
    x = np.random.default_rng(2).random((12, 32, 32, 1)).astype(np.float32)
    diff = np.abs(mixed.predict(x).astype(np.float32) - reference.predict(x).astype(np.float32))
    assert diff.max() <= TOLERANCE[precision], diff.max()


def test_precision_needs_a_model_that_rebuilds_from_its_config():
    import keras

    from unet_core.model.precision import with_precision

    class Mine(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(1, 1)

        def call(self, x):
            return self.conv(x)

    model = Mine()
    model(np.zeros((1, 8, 8, 1), np.float32))
    assert with_precision(model, "float32") is model
    with pytest.raises(ConfigError, match="not a functional or sequential"):
        with_precision(model, "mixed_float16")
    seq = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, padding="same"),
                            keras.layers.Conv2D(1, 1, activation="sigmoid")])
    mixed = with_precision(seq, "mixed_bfloat16")
    assert [layer.compute_dtype for layer in mixed.layers] == ["bfloat16", "float32"]


def test_truth_pairs_by_volume_id_or_the_nifti_sources_name():
    from unet_core.evaluation import truth_names

    assert truth_names({"volume_id": "dcm-0123456789abcdef", "format": "dicom", "source": "s3://a/s/"}) == [
        "dcm-0123456789abcdef.nii.gz", "dcm-0123456789abcdef.nii"]
    names = truth_names({"volume_id": "nii-0123456789abcdef", "format": "nifti", "source": "s3://a/patient_0.nii.gz"})
    assert "patient_0.nii.gz" in names and "patient_0.nii" in names


def test_a_native_bundle_segments_by_sliding_window_through_the_predictor(tmp_path):
    """A saved native-recipe bundle (patch 16) through SlicePredictor: tiles of every slice in
    fixed batches, with and without TTA, back on the source grid of an oblique series, where the
    model's intensity band puts them: the phantom's organ."""
    import keras

    from support.dicom_factory import write_series
    from unet_core.io import read_volume
    from unet_core.synthetic import TARGET, SeriesSpec

    band = keras.layers.Conv2D(2, 1, activation="relu")
    head = keras.layers.Conv2D(1, 1, activation="sigmoid")
    model = keras.Sequential([keras.Input((16, 16, 1)), band, head])
    band.set_weights([np.ones((1, 1, 1, 2), np.float32), np.array([-0.3, -0.8], np.float32)])  # 0..200 HU window
    head.set_weights([np.array([60.0, -200.0], np.float32).reshape(1, 1, 2, 1), np.array([-6.0], np.float32)])
    pre = PreprocessConfig(recipe="native", input_size=16, target_spacing=4.0, window=None, window_lower=0.0,
                           window_upper=200.0)
    save_bundle(str(tmp_path / "native"), model, BundleInfo(preprocess=pre, model=None, name="native"))
    _, _, truth = write_series(tmp_path / "s", SeriesSpec(orientation="oblique", rows=36, columns=44, n_slices=5,
                                                          pixel_spacing=(5.5, 6.5)))
    volume = read_volume(str(tmp_path / "s"))
    predictor = SlicePredictor(str(tmp_path / "native"), batch_size=7)
    info = predictor.info
    assert info.preprocess.recipe == "native"
    results = {}
    for tta in (False, True):
        x = prepare_volume(volume, info.preprocess, tta=tta)
        assert len(x) % 7 and len(x) > 7 * 4  # several batches, the last one padded
        labels = finish_volume(predictor.predict(x), volume, info.threshold, PostProcess(), preprocess=info.preprocess,
                               tta=tta)
        results[tta] = labels
        assert labels.shape == volume.shape
        assert dice(labels, truth == TARGET) > 0.9
    assert dice(results[False], results[True]) > 0.98  # a 1x1 model is flip-equivariant up to float rounding
