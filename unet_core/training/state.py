"""Optimizer construction and checkpoint state (weights, optimizer slots, callback state).

A checkpoint folder holds:
    weights.npz       the model's current weights
    best_weights.npz  the weights of the best validation epoch so far
    optimizer.npz     every optimizer variable (iterations, Adam moments, loss scale)
    state.json        epoch, callback state (patience counters, learning rate, history)
"""
from __future__ import annotations

import json
import os

import keras
import numpy as np

from unet_core.config import TrainConfig
from unet_core.training.callbacks import CallbackState


def set_precision(cfg: TrainConfig) -> None:
    """Global Keras dtype policy; call before building the model."""
    keras.mixed_precision.set_global_policy(cfg.precision)


def make_optimizer(cfg: TrainConfig, learning_rate: float | None = None) -> keras.optimizers.Optimizer:
    opt = keras.optimizers.Adam(learning_rate=learning_rate or cfg.learning_rate)
    if cfg.precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def set_learning_rate(optimizer: keras.optimizers.Optimizer, value: float) -> None:
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    inner.learning_rate.assign(value)


def _save_list(path: str, arrays: list[np.ndarray]) -> None:
    np.savez(path, *arrays)


def _load_list(path: str) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def save_state(folder: str, model: keras.Model, optimizer: keras.optimizers.Optimizer,
               best_weights: list[np.ndarray], callbacks: CallbackState, epoch: int, info: dict) -> None:
    os.makedirs(folder, exist_ok=True)
    _save_list(os.path.join(folder, "weights.npz"), model.get_weights())
    _save_list(os.path.join(folder, "best_weights.npz"), best_weights)
    _save_list(os.path.join(folder, "optimizer.npz"), [np.asarray(v) for v in optimizer.variables])
    with open(os.path.join(folder, "state.json"), "w") as f:
        json.dump({"epoch": epoch, "callbacks": callbacks.to_dict(), **info}, f, indent=2)


def load_state(folder: str, model: keras.Model, optimizer: keras.optimizers.Optimizer) -> tuple[int, CallbackState, list[np.ndarray], dict]:
    """Restore weights and optimizer slots in place; returns (epoch, callbacks, best weights, info)."""
    with open(os.path.join(folder, "state.json")) as f:
        state = json.load(f)
    model.set_weights(_load_list(os.path.join(folder, "weights.npz")))
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    saved = _load_list(os.path.join(folder, "optimizer.npz"))
    if len(saved) != len(optimizer.variables):
        raise ValueError(f"checkpoint {folder} has {len(saved)} optimizer variables, the optimizer {len(optimizer.variables)}")
    for var, value in zip(optimizer.variables, saved, strict=True):
        var.assign(value)
    callbacks = CallbackState.from_dict(state.pop("callbacks"))
    return state.pop("epoch"), callbacks, _load_list(os.path.join(folder, "best_weights.npz")), state


def load_best_weights(folder: str) -> list[np.ndarray]:
    return _load_list(os.path.join(folder, "best_weights.npz"))


def read_state(folder: str) -> dict:
    with open(os.path.join(folder, "state.json")) as f:
        return json.load(f)
