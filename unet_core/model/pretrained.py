"""Pretrained weights, as the seed's `unet(pretrained_weights=...)`, for Keras 3 files.

- `mode="full"`: a whole Keras model file (`.keras`) or a weights file (`.weights.h5`) whose
  architecture equals the target's; every weight is loaded.
- `mode="encoder"`: copy the encoder (contracting path and bottleneck) by layer name from a
  `.keras` model file into a model with a different head (other number of classes, other
  decoder). A first convolution trained on one channel is spread over several input channels
  (the kernel divided by the channel count, so a constant image gives the same response).
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from unet_core.errors import ConfigError, InputError
from unet_core.model.unet import encoder_layer_names


def load_model_file(path: str | Path) -> keras.Model:
    """Load a `.keras` file without compiling (custom losses are not needed for inference)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pretrained model file {path} does not exist", uri=str(path))
    if path.suffix != ".keras":
        raise ConfigError(f"{path}: expected a '.keras' model file")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a broken archive
        raise InputError(f"cannot load Keras model {path}: {exc}", uri=str(path)) from exc


def load_pretrained(
    model: keras.Model, path: str | Path, mode: str = "full", freeze_encoder: bool = False
) -> keras.Model:
    """Load weights from `path` into `model` (in place) and return it."""
    path = Path(path)
    if mode == "full":
        if path.name.endswith(".weights.h5"):
            if not path.is_file():
                raise InputError(f"weights file {path} does not exist", uri=str(path))
            try:
                model.load_weights(path)
            except ValueError as exc:
                raise ConfigError(
                    f"weights in {path} do not fit this model ({exc}); for a model with another "
                    "head, load a .keras file with mode='encoder'"
                ) from exc
        else:
            source = load_model_file(path)
            _check_same_architecture(model, source, path)
            model.set_weights(source.get_weights())
    elif mode == "encoder":
        transfer_encoder(load_model_file(path), model)
    else:
        raise ConfigError(f"mode must be 'full' or 'encoder', got {mode!r}")
    if freeze_encoder:
        freeze(model, encoder_layer_names(model))
    return model


def transfer_encoder(source: keras.Model, target: keras.Model) -> list[str]:
    """Copy encoder weights by layer name; returns the names copied."""
    names = encoder_layer_names(target)
    source_layers = {layer.name: layer for layer in source.layers}
    missing = [n for n in names if n not in source_layers]
    if missing:
        raise ConfigError(
            f"source model lacks encoder layers {missing[:5]}; was it built by unet_core with the "
            "same depth?"
        )
    for name in names:
        src = source_layers[name].get_weights()
        dst = target.get_layer(name).get_weights()
        adapted = []
        for s, d in zip(src, dst, strict=True):
            if s.shape == d.shape:
                adapted.append(s)
            elif s.ndim == 4 and s.shape[:2] == d.shape[:2] and s.shape[3] == d.shape[3] and s.shape[2] == 1:
                adapted.append(np.repeat(s, d.shape[2], axis=2) / d.shape[2])
            else:
                raise ConfigError(
                    f"encoder layer {name!r}: source weight shape {s.shape} does not fit {d.shape} "
                    "(base_filters must match)"
                )
        target.get_layer(name).set_weights(adapted)
    return names


def freeze(model: keras.Model, names: list[str]) -> None:
    for name in names:
        model.get_layer(name).trainable = False


def _check_same_architecture(model: keras.Model, source: keras.Model, path: Path) -> None:
    want = [tuple(w.shape) for w in model.weights]
    got = [tuple(w.shape) for w in source.weights]
    if want != got:
        raise ConfigError(
            f"model in {path} has {len(got)} weights with other shapes than the target "
            f"({len(want)}); load it with mode='encoder' to transfer the encoder only"
        )
