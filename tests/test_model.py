from __future__ import annotations

import numpy as np
import pytest

from unet_core.config import ModelConfig, from_dict
from unet_core.errors import ConfigError
from unet_core.model import build_unet


def test_default_is_the_seed_network():
    model = build_unet()
    assert model.count_params() == 31_031_685
    assert model.input_shape == (None, 256, 256, 1)
    assert model.output_shape == (None, 256, 256, 1)
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert max(layer.filters for layer in convs) == 1024
    assert all(layer.kernel_initializer.__class__.__name__ == "HeNormal" for layer in convs[:-1])
    assert model.get_layer("head").activation.__name__ == "sigmoid"
    assert model.get_layer("head_conv").filters == 2
    assert {layer.name for layer in model.layers if "dropout" in layer.name} == {"enc3_dropout", "bottleneck_dropout"}
    assert model.get_layer("dec0_up").kernel_size == (2, 2)


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(input_size=64, base_filters=8, depth=3, batch_norm=True),
        ModelConfig(input_size=32, base_filters=4, upsampling="transpose", input_channels=3),
        ModelConfig(input_size=32, base_filters=4, num_classes=4, head_conv_filters=0, dropout=0.0),
    ],
)
def test_options_build_and_predict(cfg):
    model = build_unet(cfg)
    x = np.random.default_rng(0).random((2, cfg.input_size, cfg.input_size, cfg.input_channels), np.float32)
    y = model.predict(x, verbose=0)
    assert y.shape == (2, cfg.input_size, cfg.input_size, cfg.num_classes)
    if cfg.num_classes > 1:
        np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)
    else:
        assert ((y >= 0) & (y <= 1)).all()
    if cfg.batch_norm:
        assert any(layer.__class__.__name__ == "BatchNormalization" for layer in model.layers)
    if cfg.upsampling == "transpose":
        assert model.get_layer("dec0_up").__class__.__name__ == "Conv2DTranspose"


def test_indivisible_input_size_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"input size 100 is not divisible by 2\*\*depth = 16"):
        ModelConfig(input_size=100)


def test_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match=r"unknown ModelConfig keys \['base_filter'\]"):
        from_dict(ModelConfig, {"base_filter": 32})
    assert from_dict(ModelConfig, {"base_filters": 32}).base_filters == 32
