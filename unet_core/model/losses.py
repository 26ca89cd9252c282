"""Losses and metrics, in `keras.ops` so they run inside any Keras 3 backend and tf.function.

Shapes: `y_true` is (batch, H, W, 1); binary truth holds 0/1, multi-class truth holds integer
labels 0..K-1. `y_pred` is (batch, H, W, 1) sigmoid probabilities or (batch, H, W, K) softmax.

Losses return one value per example (shape (batch,)) so a distributed step can average them over
the global batch with `tf.nn.compute_average_loss`. Metrics follow the seed's definitions and are
computed over every pixel they are given (the seed flattened the whole batch).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from keras import ops

from unet_core.errors import ConfigError

SMOOTH = 1.0
MEAN_IOU_THRESHOLDS = tuple(np.arange(0.5, 1.0, 0.05).round(2).tolist())


def _as_float(y):
    return ops.cast(y, "float32")


def _one_hot(y_true, num_classes: int):
    labels = ops.cast(ops.squeeze(y_true, axis=-1), "int32")
    return ops.one_hot(labels, num_classes, dtype="float32")


# ---- the seed's metrics (binary) -------------------------------------------------------------
def dice_coef(y_true, y_pred, smooth: float = SMOOTH):
    """The seed's Dice: (2|T.P| + smooth) / (|T| + |P| + smooth) over all pixels given."""
    t = ops.reshape(_as_float(y_true), (-1,))
    p = ops.reshape(_as_float(y_pred), (-1,))
    intersection = ops.sum(t * p)
    return (2.0 * intersection + smooth) / (ops.sum(t) + ops.sum(p) + smooth)


def iou(y_true, y_pred, smooth: float = SMOOTH):
    """Soft Jaccard: (|T.P| + smooth) / (|T| + |P| - |T.P| + smooth)."""
    t = ops.reshape(_as_float(y_true), (-1,))
    p = ops.reshape(_as_float(y_pred), (-1,))
    intersection = ops.sum(t * p)
    return (intersection + smooth) / (ops.sum(t) + ops.sum(p) - intersection + smooth)


def mean_iou(y_true, y_pred):
    """The seed's `mean_iou` (Kaggle DSB 2018 form): binarise the prediction at thresholds
    0.5, 0.55, ..., 0.95; at each, take the mean of foreground and background IoU; average."""
    t = ops.reshape(_as_float(y_true), (-1,))
    p = ops.reshape(_as_float(y_pred), (-1,))
    scores = []
    for threshold in MEAN_IOU_THRESHOLDS:
        b = ops.cast(p > threshold, "float32")
        per_class = []
        for tc, pc in ((t, b), (1.0 - t, 1.0 - b)):
            inter = ops.sum(tc * pc)
            union = ops.sum(tc) + ops.sum(pc) - inter
            # A class absent from both truth and prediction is a perfect match.
            per_class.append(ops.where(union > 0, inter / ops.maximum(union, 1e-12), 1.0))
        scores.append((per_class[0] + per_class[1]) / 2.0)
    return ops.mean(ops.stack(scores))


def binary_accuracy(y_true, y_pred, threshold: float = 0.5):
    return ops.mean(ops.cast(ops.equal(_as_float(y_true), _as_float(y_pred > threshold)), "float32"))


# ---- multi-class metrics ----------------------------------------------------------------------
def multiclass_dice(y_true, y_pred, smooth: float = SMOOTH, include_background: bool = False):
    """Mean over classes of the seed's Dice on one-hot truth and softmax probabilities."""
    k = y_pred.shape[-1]
    t = _one_hot(y_true, k)
    axes = tuple(range(len(t.shape) - 1))
    inter = ops.sum(t * y_pred, axis=axes)
    dice = (2.0 * inter + smooth) / (ops.sum(t, axis=axes) + ops.sum(y_pred, axis=axes) + smooth)
    return ops.mean(dice if include_background else dice[1:])


def multiclass_iou(y_true, y_pred, smooth: float = SMOOTH, include_background: bool = False):
    k = y_pred.shape[-1]
    t = _one_hot(y_true, k)
    axes = tuple(range(len(t.shape) - 1))
    inter = ops.sum(t * y_pred, axis=axes)
    union = ops.sum(t, axis=axes) + ops.sum(y_pred, axis=axes) - inter
    score = (inter + smooth) / (union + smooth)
    return ops.mean(score if include_background else score[1:])


def multiclass_accuracy(y_true, y_pred):
    labels = ops.cast(ops.squeeze(y_true, axis=-1), "int32")
    return ops.mean(ops.cast(ops.equal(labels, ops.argmax(y_pred, axis=-1)), "float32"))


# ---- per-example losses -----------------------------------------------------------------------
def bce_loss(y_true, y_pred):
    eps = 1e-7
    p = ops.clip(_as_float(y_pred), eps, 1.0 - eps)
    t = _as_float(y_true)
    bce = -(t * ops.log(p) + (1.0 - t) * ops.log(1.0 - p))
    return ops.mean(bce, axis=(1, 2, 3))


def soft_dice_loss(y_true, y_pred, smooth: float = SMOOTH):
    """1 - Dice per example (binary)."""
    t = _as_float(y_true)
    p = _as_float(y_pred)
    inter = ops.sum(t * p, axis=(1, 2, 3))
    dice = (2.0 * inter + smooth) / (ops.sum(t, axis=(1, 2, 3)) + ops.sum(p, axis=(1, 2, 3)) + smooth)
    return 1.0 - dice


def bce_dice_loss(y_true, y_pred):
    return bce_loss(y_true, y_pred) + soft_dice_loss(y_true, y_pred)


def cce_loss(y_true, y_pred):
    k = y_pred.shape[-1]
    t = _one_hot(y_true, k)
    p = ops.clip(_as_float(y_pred), 1e-7, 1.0)
    return ops.mean(-ops.sum(t * ops.log(p), axis=-1), axis=(1, 2))


def multiclass_soft_dice_loss(y_true, y_pred, smooth: float = SMOOTH):
    """1 - mean foreground-class Dice per example."""
    k = y_pred.shape[-1]
    t = _one_hot(y_true, k)
    p = _as_float(y_pred)
    inter = ops.sum(t * p, axis=(1, 2))
    dice = (2.0 * inter + smooth) / (ops.sum(t, axis=(1, 2)) + ops.sum(p, axis=(1, 2)) + smooth)
    return 1.0 - ops.mean(dice[:, 1:], axis=-1)


def cce_dice_loss(y_true, y_pred):
    return cce_loss(y_true, y_pred) + multiclass_soft_dice_loss(y_true, y_pred)


_BINARY_LOSSES = {"bce": bce_loss, "dice": soft_dice_loss, "bce_dice": bce_dice_loss}
_MULTI_LOSSES = {
    "cce": cce_loss,
    "bce": cce_loss,  # the seed's default name maps to its multi-class form
    "dice": multiclass_soft_dice_loss,
    "cce_dice": cce_dice_loss,
    "bce_dice": cce_dice_loss,
}


def get_loss(name: str, num_classes: int) -> Callable:
    """A per-example loss by name, in its binary (num_classes == 1) or multi-class form."""
    table = _BINARY_LOSSES if num_classes == 1 else _MULTI_LOSSES
    if name not in table:
        raise ConfigError(f"unknown loss {name!r}; known: {sorted(table)}")
    return table[name]
