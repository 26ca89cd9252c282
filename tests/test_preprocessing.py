from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from unet_core import preprocessing as P
from unet_core.config import PreprocessConfig
from unet_core.errors import ConfigError


def test_ct_window_clips_and_scales():
    hu = np.array([-2000, -160, 40, 240, 3000], np.int16)
    out = P.window_ct(hu, -160, 240)
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1])
    assert out.dtype == np.float32
    with pytest.raises(ConfigError, match="below upper"):
        P.window_ct(hu, 10, 10)


def test_named_window_and_unknown_name():
    assert PreprocessConfig(window="lung").window_bounds() == (-1350.0, 150.0)
    assert PreprocessConfig(window=None, window_lower=-100, window_upper=100).window_bounds() == (-100, 100)
    with pytest.raises(ConfigError, match="unknown window 'lungs'"):
        PreprocessConfig(window="lungs")


def test_seed_normalisation():
    np.testing.assert_allclose(P.normalise_uint(np.array([0, 255], np.uint8), 8), [0, 1])
    np.testing.assert_allclose(P.normalise_uint(np.array([0, 65535], np.uint16), 16), [0, 1])


@pytest.mark.parametrize("shape", [(512, 512), (300, 417), (64, 64), (17, 255)])
def test_resize_matches_tensorflow_and_returns_to_grid(shape):
    x = np.random.default_rng(0).random((2, *shape), np.float32)
    ours = P.resize_linear(x, (256, 256))
    ref = tf.image.resize(x[..., None], (256, 256), method="bilinear", antialias=False).numpy()[..., 0]
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    back = P.resize_linear(ours, shape)
    assert back.shape == x.shape
    labels = np.random.default_rng(1).integers(0, 5, (2, *shape)).astype(np.uint8)
    small = P.resize_nearest(labels, (256, 256))
    assert small.dtype == np.uint8 and set(np.unique(small)) <= set(range(5))
    assert P.resize_nearest(small, shape).shape == labels.shape


def test_nearest_upsample_then_downsample_is_identity():
    labels = np.random.default_rng(2).integers(0, 3, (128, 128)).astype(np.uint8)
    np.testing.assert_array_equal(P.resize_nearest(P.resize_nearest(labels, (256, 256)), (128, 128)), labels)


def test_model_input_with_context_channels():
    vol = np.stack([np.full((40, 40), v, np.float32) for v in (-160, 40, 240)])
    x = P.slices_to_model_input(vol, PreprocessConfig(input_size=32, context_slices=1))
    assert x.shape == (3, 32, 32, 3)
    np.testing.assert_allclose(x[0, 0, 0], [0, 0, 0.5])  # edge slice repeats itself
    np.testing.assert_allclose(x[1, 0, 0], [0, 0.5, 1])


def test_probabilities_to_labels():
    p = np.array([[[0.2], [0.7]]], np.float32)
    np.testing.assert_array_equal(P.probabilities_to_labels(p, 0.5), [[0, 1]])
    soft = np.array([[[0.1, 0.2, 0.7]]], np.float32)
    np.testing.assert_array_equal(P.probabilities_to_labels(soft, 0.5), [[2]])


def test_ct_foreground_normalisation_clips_to_the_percentiles_then_zscores():
    cfg = PreprocessConfig(recipe="native", normalization="ct_foreground", foreground_mean=100.0, foreground_std=50.0,
                           foreground_p005=-100.0, foreground_p995=400.0)
    hu = np.array([[-1000.0, -100.0, 100.0], [150.0, 400.0, 3000.0]], np.float32)
    out = P.normalise(hu, cfg)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[-4.0, -4.0, 0.0], [1.0, 6.0, 6.0]])
    np.testing.assert_array_equal(hu[0], [-1000.0, -100.0, 100.0])  # the input is not modified


def test_zscore_normalisation_uses_the_whole_images_own_statistics():
    cfg = PreprocessConfig(modality="uint16", recipe="native", normalization="zscore")
    x = np.array([[[1.0, 3.0]], [[5.0, 7.0]]], np.float32)  # (n, H, W): one image of two slices
    np.testing.assert_allclose(P.normalise(x, cfg), (x - 4.0) / np.sqrt(5.0), rtol=1e-6)
    assert (P.normalise(np.full((2, 3, 3), 9.0), cfg) == 0).all()  # a constant image: zeros, not NaN


def test_window_normalisation_is_unchanged_by_the_native_options():
    hu = np.linspace(-300, 400, 50, dtype=np.float32)
    np.testing.assert_array_equal(P.normalise(hu, PreprocessConfig(recipe="native")), P.window_ct(hu, -160.0, 240.0))
