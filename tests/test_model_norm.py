"""The U-Net's normalisation (`ModelConfig.norm`, `unet train --norm`): instance normalisation builds,
trains, saves and reloads; `batch_norm` / `--batch-norm` still mean batch normalisation, and bundles
written before `norm` existed read as they did."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from jobs.train import build_parser
from support.squares import squares
from unet_core.bundle import BundleInfo, load_bundle, save_bundle
from unet_core.config import AugmentConfig, ModelConfig, Norm, PreprocessConfig, TrainConfig, from_dict, to_dict
from unet_core.errors import ConfigError
from unet_core.model import build_unet
from unet_core.model.losses import get_loss
from unet_core.training.state import make_optimizer
from unet_core.training.step import DistributedSteps, accumulate, scores

SMALL = dict(input_size=32, base_filters=4, depth=2, dropout=0.0)


def _layer_kinds(model: keras.Model) -> set[str]:
    return {layer.__class__.__name__ for layer in model.layers}


def test_batch_norm_is_norm_batch_either_way():
    assert ModelConfig().norm is Norm.NONE and not ModelConfig().batch_norm
    assert ModelConfig(batch_norm=True).norm is Norm.BATCH
    assert ModelConfig(norm="batch").batch_norm is True
    instance = ModelConfig(norm="instance")
    assert instance.norm is Norm.INSTANCE and instance.batch_norm is False
    with pytest.raises(ConfigError, match="contradict"):
        ModelConfig(batch_norm=True, norm="instance")
    with pytest.raises(ConfigError, match=r"norm must be one of \['none', 'batch', 'instance'\], got 'layer'"):
        ModelConfig(norm="layer")


def test_a_model_description_from_before_norm_reads_as_it_did():
    # bundle.json's "model" as `unet train` wrote it before `norm` (no such key)
    old = {"input_size": 32, "input_channels": 1, "num_classes": 1, "base_filters": 4, "depth": 2, "dropout": 0.5,
           "upsampling": "upsample_conv", "head_conv_filters": 2}
    assert from_dict(ModelConfig, dict(old, batch_norm=True)).norm is Norm.BATCH
    assert from_dict(ModelConfig, dict(old, batch_norm=False)).norm is Norm.NONE
    # and a new description survives JSON as the bundle writes it
    text = json.dumps(to_dict(ModelConfig(**SMALL, norm="instance")))
    assert json.loads(text)["norm"] == "instance"
    assert from_dict(ModelConfig, json.loads(text)) == ModelConfig(**SMALL, norm="instance")


@pytest.mark.parametrize("argv, norm", [([], Norm.NONE), (["--batch-norm"], Norm.BATCH), (["--norm", "batch"], Norm.BATCH),
                                        (["--norm", "instance"], Norm.INSTANCE)])
def test_the_train_flags_reach_the_model_config(argv, norm):
    args = build_parser().parse_args(["--data", "d", "--output", "o", *argv])
    # the same keywords jobs/train.py's plan_run passes
    assert ModelConfig(batch_norm=args.batch_norm, norm=args.norm).norm is norm
    assert args.head_conv_filters == ModelConfig().head_conv_filters


def test_head_conv_filters_is_a_train_flag():
    args = build_parser().parse_args(["--data", "d", "--output", "o", "--head-conv-filters", "0"])
    model = build_unet(ModelConfig(**SMALL, head_conv_filters=args.head_conv_filters))
    assert "head_conv" not in {layer.name for layer in model.layers}
    assert model.get_layer("head").input.shape[-1] == SMALL["base_filters"]  # the last decoder block's features
    with pytest.raises(ConfigError, match="head_conv_filters must be >= 0"):
        ModelConfig(head_conv_filters=-1)


def test_the_layers_follow_the_norm():
    assert "BatchNormalization" in _layer_kinds(build_unet(ModelConfig(**SMALL, batch_norm=True)))
    plain = _layer_kinds(build_unet(ModelConfig(**SMALL)))
    assert not {"BatchNormalization", "GroupNormalization"} & plain
    model = build_unet(ModelConfig(**SMALL, norm="instance"))
    assert "BatchNormalization" not in _layer_kinds(model)
    norms = [layer for layer in model.layers if layer.__class__.__name__ == "GroupNormalization"]
    assert len(norms) == 2 * (2 + 1 + 2)  # two per block: 2 encoder levels, the bottleneck, 2 decoder levels
    # one group per channel: instance normalisation
    assert all(layer.groups == layer.input.shape[-1] for layer in norms)
    assert model.get_layer("enc0_conv1").use_bias is False and model.get_layer("enc0_in1").name == "enc0_in1"


def test_instance_norm_normalises_each_slice_alike_in_training_and_inference():
    """The property the native recipe needs: no running statistics, so a tile is normalised the same
    way whatever else is in its batch and whether the model is training or not (batch norm is not)."""
    rng = np.random.default_rng(0)
    x = rng.random((4, 32, 32, 1), np.float32)
    x[2:] *= 0.1  # half the batch much darker: batch statistics would differ from either half's
    keras.utils.set_random_seed(0)
    instance = build_unet(ModelConfig(**SMALL, norm="instance"))
    train_mode = instance(x, training=True).numpy()
    np.testing.assert_allclose(train_mode, instance(x, training=False).numpy(), atol=1e-5)
    np.testing.assert_allclose(train_mode[:1], instance(x[:1], training=True).numpy(), atol=1e-5)
    keras.utils.set_random_seed(0)
    batch = build_unet(ModelConfig(**SMALL, batch_norm=True))
    assert np.abs(batch(x, training=True).numpy() - batch(x, training=False).numpy()).max() > 1e-3




def test_instance_norm_trains_and_its_bundle_reloads_with_identical_predictions(tmp_path):
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(**SMALL, norm="instance")
    model = build_unet(cfg)
    train_cfg = TrainConfig(learning_rate=3e-3)
    steps = DistributedSteps(model, make_optimizer(train_cfg), get_loss("bce_dice", 1), tf.distribute.get_strategy(),
                             8, 1, AugmentConfig(enabled=False))
    x, y = squares()
    losses = [scores(accumulate(None, steps.train_step(x, y, tf.constant([0, i], tf.int64))))["loss"]
              for i in range(30)]
    assert losses[-1] < 0.85 * losses[0], losses
    gammas = model.get_layer("enc0_in1").gamma.numpy()
    assert not np.allclose(gammas, 1.0)  # the normalisation's own scale trained too

    uri = str(tmp_path / "bundle")
    save_bundle(uri, model, BundleInfo(preprocess=PreprocessConfig(input_size=32), model=cfg))
    loaded, info = load_bundle(uri)
    assert info.model == cfg and info.model.norm is Norm.INSTANCE
    assert json.loads((tmp_path / "bundle" / "bundle.json").read_text())["model"]["norm"] == "instance"
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
