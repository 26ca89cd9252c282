"""The 2D U-Net of the seed documents, built from a typed `ModelConfig`.

Defaults reproduce the seed exactly: 256x256x1 input, 64 base filters doubling over depth 4 to
1024, two 3x3 ReLU `he_normal` convolutions per level, dropout 0.5 after the two deepest levels,
2x up-sampling followed by a 2x2 convolution, skip concatenation, an extra 3x3 convolution with 2
filters and a 1x1 sigmoid head: 31,031,685 parameters.

Layer names are stable (`enc{level}_conv{n}`, `bottleneck_conv{n}`, `dec{level}_...`, `head`) so
that encoder weights can be transferred by name between models with different heads.
"""
from __future__ import annotations

import keras
from keras import layers

from unet_core.config import ModelConfig, Norm

_CONV = dict(padding="same", kernel_initializer="he_normal")


def _conv_block(x, filters: int, name: str, norm: Norm):
    for n in (1, 2):
        if norm is Norm.BATCH:
            x = layers.Conv2D(filters, 3, use_bias=False, name=f"{name}_conv{n}", **_CONV)(x)
            # Synchronised across replicas: identical statistics on every worker (and better
            # estimates from small per-worker batches); a plain BatchNormalization outside tf.distribute.
            x = layers.BatchNormalization(synchronized=True, name=f"{name}_bn{n}")(x)
            x = layers.Activation("relu", name=f"{name}_relu{n}")(x)
        elif norm is Norm.INSTANCE:
            x = layers.Conv2D(filters, 3, use_bias=False, name=f"{name}_conv{n}", **_CONV)(x)
            # One group per channel is instance normalisation: each sample's own statistics over
            # (height, width), the same in training and inference, nothing shared across replicas.
            x = layers.GroupNormalization(groups=-1, name=f"{name}_in{n}")(x)
            x = layers.Activation("relu", name=f"{name}_relu{n}")(x)
        else:
            x = layers.Conv2D(filters, 3, activation="relu", name=f"{name}_conv{n}", **_CONV)(x)
    return x


def build_unet(cfg: ModelConfig | None = None) -> keras.Model:
    """Build the U-Net. Input (batch, size, size, channels) float32 in [0, 1]; output
    (batch, size, size, 1) sigmoid probabilities, or (batch, size, size, K) softmax for K classes.

    `cfg.norm` puts batch normalisation (`{name}_bn{n}`) or instance normalisation (`{name}_in{n}`)
    between each 3x3 convolution (then without bias) and its ReLU.
    The output layer is float32 even under a mixed-precision policy, so losses stay stable.
    """
    cfg = cfg or ModelConfig()
    inputs = keras.Input((cfg.input_size, cfg.input_size, cfg.input_channels), name="image")
    x = inputs
    skips = []
    # The seed applies dropout to the two deepest levels: the last encoder level and the bottleneck.
    for level in range(cfg.depth):
        x = _conv_block(x, cfg.base_filters * 2**level, f"enc{level}", cfg.norm)
        if level == cfg.depth - 1 and cfg.dropout > 0:
            x = layers.Dropout(cfg.dropout, name=f"enc{level}_dropout")(x)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = _conv_block(x, cfg.base_filters * 2**cfg.depth, "bottleneck", cfg.norm)
    if cfg.dropout > 0:
        x = layers.Dropout(cfg.dropout, name="bottleneck_dropout")(x)

    for level in reversed(range(cfg.depth)):
        filters = cfg.base_filters * 2**level
        if cfg.upsampling == "transpose":
            x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"dec{level}_up", **_CONV)(x)
        else:
            x = layers.UpSampling2D(2, name=f"dec{level}_upsample")(x)
            x = layers.Conv2D(filters, 2, activation="relu", name=f"dec{level}_up", **_CONV)(x)
        x = layers.Concatenate(axis=-1, name=f"dec{level}_concat")([skips[level], x])
        x = _conv_block(x, filters, f"dec{level}", cfg.norm)

    if cfg.head_conv_filters:
        x = layers.Conv2D(
            cfg.head_conv_filters, 3, activation="relu", name="head_conv", **_CONV
        )(x)
    if cfg.num_classes == 1:
        outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="head")(x)
    else:
        outputs = layers.Conv2D(
            cfg.num_classes, 1, activation="softmax", dtype="float32", name="head"
        )(x)
    return keras.Model(inputs, outputs, name="unet")


def encoder_layer_names(model: keras.Model) -> list[str]:
    """Names of the layers holding encoder weights (the contracting path and the bottleneck)."""
    return [
        layer.name
        for layer in model.layers
        if layer.weights and (layer.name.startswith("enc") or layer.name.startswith("bottleneck"))
    ]
