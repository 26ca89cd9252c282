from __future__ import annotations

import numpy as np
import pytest

from unet_core.config import ModelConfig
from unet_core.errors import ConfigError, InputError
from unet_core.model import build_unet, encoder_layer_names
from unet_core.model.pretrained import load_pretrained

SMALL = ModelConfig(input_size=32, base_filters=4, depth=2)


def _x(channels=1):
    return np.random.default_rng(1).random((2, 32, 32, channels), np.float32)


def _trained_source(tmp_path):
    src = build_unet(SMALL)
    # Perturb so loaded weights differ from any fresh initialisation.
    src.set_weights([w + 0.01 for w in src.get_weights()])
    path = tmp_path / "source.keras"
    src.save(path)
    return src, path


def test_full_model_file(tmp_path):
    src, path = _trained_source(tmp_path)
    target = load_pretrained(build_unet(SMALL), path)
    np.testing.assert_allclose(target.predict(_x(), verbose=0), src.predict(_x(), verbose=0), rtol=1e-6)


def test_weights_file(tmp_path):
    src, _ = _trained_source(tmp_path)
    path = tmp_path / "w.weights.h5"
    src.save_weights(path)
    target = load_pretrained(build_unet(SMALL), path)
    for a, b in zip(src.get_weights(), target.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_encoder_into_other_head_and_channels_then_freeze(tmp_path):
    src, path = _trained_source(tmp_path)
    cfg = ModelConfig(input_size=32, base_filters=4, depth=2, num_classes=3, input_channels=3)
    target = load_pretrained(build_unet(cfg), path, mode="encoder", freeze_encoder=True)
    names = encoder_layer_names(target)
    assert "enc0_conv1" in names and "bottleneck_conv2" in names
    for name in names[1:]:
        for a, b in zip(src.get_layer(name).get_weights(), target.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    # One channel spread over three: a constant 3-channel image gives the 1-channel response.
    k_src = src.get_layer("enc0_conv1").get_weights()[0]
    k_dst = target.get_layer("enc0_conv1").get_weights()[0]
    np.testing.assert_allclose(k_dst.sum(axis=2), k_src[:, :, 0], rtol=1e-6)
    assert all(not target.get_layer(n).trainable for n in names)
    assert target.get_layer("head").trainable
    assert len(target.trainable_weights) < len(target.weights)


def test_full_load_into_other_architecture_is_refused(tmp_path):
    _, path = _trained_source(tmp_path)
    other = build_unet(ModelConfig(input_size=32, base_filters=4, depth=2, num_classes=3))
    with pytest.raises(ConfigError, match="mode='encoder'"):
        load_pretrained(other, path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_pretrained(build_unet(SMALL), tmp_path / "nope.keras")
