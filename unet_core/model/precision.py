"""Compute precision of a loaded model.

`keras.saving.load_model` restores each layer's saved dtype policy, so a global mixed policy set
before loading a float32 model leaves every layer in float32 (docs/design.md, fact 11). A model
that must compute in float16 / bfloat16 is therefore rebuilt from its config with the policy set
on each layer, and given the loaded weights. Variables stay float32 (a mixed policy's variable
dtype); the layers that produce the model's outputs (the sigmoid / softmax head) stay float32, so
probabilities and thresholds behave as in float32.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from unet_core.errors import ConfigError

if TYPE_CHECKING:
    import keras

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def _policy(name: str) -> dict:
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": name}, "registered_name": None}


def _output_names(model_config: dict) -> set[str]:
    outputs = model_config["config"].get("output_layers")
    if outputs is None:  # Sequential: the last layer
        return {model_config["config"]["layers"][-1]["config"]["name"]}
    if outputs and isinstance(outputs[0], str):  # a single output: [name, node, tensor]
        outputs = [outputs]
    return {o[0] for o in outputs}


def _set_policies(model_config: dict, precision: str, keep_float32: set[str]) -> int:
    """Set `precision` on every layer of a Functional / Sequential config (nested models too),
    except input layers and the layers named in `keep_float32`. Returns how many were set."""
    n = 0
    for layer in model_config["config"]["layers"]:
        cfg = layer["config"]
        if layer["class_name"] == "InputLayer":
            continue
        if isinstance(cfg.get("layers"), list):  # a nested Functional / Sequential model
            n += _set_policies(layer, precision, set())
            continue
        cfg["dtype"] = _policy("float32" if cfg.get("name") in keep_float32 else precision)
        n += 1
    return n


def with_precision(model: keras.Model, precision: str) -> keras.Model:
    """`model` itself for float32; otherwise a copy computing in `precision`, with its weights."""
    import keras

    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32":
        return model
    config = keras.saving.serialize_keras_object(model)
    if not isinstance(config.get("config", {}).get("layers"), list):
        raise ConfigError(f"--precision {precision} rebuilds the model from its config, and this model "
                          f"({type(model).__name__}) is not a functional or sequential Keras model; use float32")
    outputs = _output_names(config)
    _set_policies(config, precision, outputs)
    clone = keras.saving.deserialize_keras_object(config)
    clone.set_weights(model.get_weights())
    return clone


def compute_dtypes(model: keras.Model) -> dict[str, str]:
    """Layer name -> compute dtype, for every layer with weights (nested models flattened)."""
    out = {}
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            out.update(compute_dtypes(layer))
        elif layer.weights:
            out[layer.name] = layer.compute_dtype
    return out
