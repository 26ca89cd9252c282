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
