"""The distributed train / eval step (docs/design.md, fact 1): `strategy.run` of a `tf.GradientTape`
step with a Keras 3 model and optimizer, the loss averaged over the *global* batch with
`tf.nn.compute_average_loss`, and metric sums reduced across replicas.

Keras 3 `model.fit` fails inside MultiWorkerMirroredStrategy under Ray Train (ray#47464,
keras#20585); this step is what works. It runs unchanged under the default (single-device)
strategy, which is how the single-process benchmark uses it.

Metrics are accumulated as sums over every pixel of the epoch and turned into scores at the end
(`scores`), so the result does not depend on how the epoch was cut into batches or workers.
"""
from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from unet_core.augment import augment_batch
from unet_core.config import AugmentConfig
from unet_core.model.losses import MEAN_IOU_THRESHOLDS, SMOOTH

_THRESHOLDS = tf.constant(MEAN_IOU_THRESHOLDS, tf.float32)


def _binary_sums(y: tf.Tensor, p: tf.Tensor) -> dict[str, tf.Tensor]:
    t = tf.cast(y, tf.float32)
    p = tf.cast(p, tf.float32)
    hard = tf.cast(p > 0.5, tf.float32)
    b = tf.cast(p[..., None] > _THRESHOLDS, tf.float32)  # (..., 1, T)
    tt = t[..., None]
    fg_inter = tf.reduce_sum(tt * b, axis=[0, 1, 2, 3])
    fg_union = tf.reduce_sum(tf.maximum(tt, b), axis=[0, 1, 2, 3])
    bg_inter = tf.reduce_sum((1 - tt) * (1 - b), axis=[0, 1, 2, 3])
    bg_union = tf.reduce_sum(tf.maximum(1 - tt, 1 - b), axis=[0, 1, 2, 3])
    return {
        "inter": tf.reduce_sum(t * p), "sum_t": tf.reduce_sum(t), "sum_p": tf.reduce_sum(p),
        "inter_hard": tf.reduce_sum(t * hard), "sum_hard": tf.reduce_sum(hard),
        "correct": tf.reduce_sum(tf.cast(tf.equal(t, hard), tf.float32)),
        "pixels": tf.cast(tf.size(t), tf.float32),
        "fg_inter": fg_inter, "fg_union": fg_union, "bg_inter": bg_inter, "bg_union": bg_union,
    }


def _multiclass_sums(y: tf.Tensor, p: tf.Tensor) -> dict[str, tf.Tensor]:
    k = p.shape[-1]
    p = tf.cast(p, tf.float32)
    labels = tf.cast(y[..., 0], tf.int32)
    t = tf.one_hot(labels, k, dtype=tf.float32)
    hard = tf.one_hot(tf.argmax(p, axis=-1, output_type=tf.int32), k, dtype=tf.float32)
    axes = [0, 1, 2]
    return {
        "inter": tf.reduce_sum(t * p, axis=axes), "sum_t": tf.reduce_sum(t, axis=axes),
        "sum_p": tf.reduce_sum(p, axis=axes), "inter_hard": tf.reduce_sum(t * hard, axis=axes),
        "sum_hard": tf.reduce_sum(hard, axis=axes),
        "correct": tf.reduce_sum(tf.cast(tf.equal(labels, tf.argmax(p, axis=-1, output_type=tf.int32)), tf.float32)),
        "pixels": tf.cast(tf.size(labels), tf.float32),
    }


def scores(sums: dict[str, np.ndarray], prefix: str = "") -> dict[str, float]:
    """Epoch sums -> the seed's metrics: loss, accuracy, dice (soft, the seed's), dice_hard
    (thresholded), iou, and mean_iou for binary models. Multi-class scores average the
    foreground classes."""
    s = {k: np.asarray(v, np.float64) for k, v in sums.items()}
    inter, st, sp = s["inter"], s["sum_t"], s["sum_p"]
    dice = (2 * inter + SMOOTH) / (st + sp + SMOOTH)
    dice_hard = (2 * s["inter_hard"] + SMOOTH) / (st + s["sum_hard"] + SMOOTH)
    iou = (inter + SMOOTH) / (st + sp - inter + SMOOTH)
    if dice.ndim:  # multi-class: drop background
        dice, dice_hard, iou = dice[1:].mean(), dice_hard[1:].mean(), iou[1:].mean()
    out = {
        "loss": float(s["loss_sum"] / max(s["examples"], 1)),
        "accuracy": float(s["correct"] / max(s["pixels"], 1)),
        "dice": float(dice), "dice_hard": float(dice_hard), "iou": float(iou),
    }
    if "fg_inter" in s:
        def ratio(i, u):
            return np.where(u > 0, i / np.maximum(u, 1e-12), 1.0)

        out["mean_iou"] = float(np.mean((ratio(s["fg_inter"], s["fg_union"]) + ratio(s["bg_inter"], s["bg_union"])) / 2))
    return {f"{prefix}{k}": v for k, v in out.items()}


class DistributedSteps:
    """Compiled train and eval steps for one model under one strategy."""

    def __init__(
        self, model: keras.Model, optimizer: keras.optimizers.Optimizer, loss_fn: Callable,
        strategy: tf.distribute.Strategy, global_batch_size: int, num_classes: int,
        augment: AugmentConfig | None = None, jit_compile: bool = False,
    ):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.strategy, self.global_batch_size = strategy, global_batch_size
        self.sums_fn = _binary_sums if num_classes == 1 else _multiclass_sums
        self.augment = augment or AugmentConfig(enabled=False)
        self.train_step = tf.function(self._train, jit_compile=jit_compile)
        self.eval_step = tf.function(self._eval, jit_compile=jit_compile)

    def _replica_train(self, x, y, seed):
        if self.augment.enabled:
            x, y = augment_batch(x, y, self.augment, seed)
        with tf.GradientTape() as tape:
            pred = self.model(x, training=True)
            per_example = self.loss_fn(y, pred)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch_size)
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        sums = self.sums_fn(y, pred)
        sums["loss_sum"] = tf.reduce_sum(tf.cast(per_example, tf.float32))
        sums["examples"] = tf.cast(tf.shape(x)[0], tf.float32)
        return sums

    def _replica_eval(self, x, y):
        pred = self.model(x, training=False)
        sums = self.sums_fn(y, pred)
        sums["loss_sum"] = tf.reduce_sum(tf.cast(self.loss_fn(y, pred), tf.float32))
        sums["examples"] = tf.cast(tf.shape(x)[0], tf.float32)
        return sums

    def _reduce(self, per_replica):
        return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

    def _train(self, x, y, seed):
        return self._reduce(self.strategy.run(self._replica_train, args=(x, y, seed)))

    def _eval(self, x, y):
        return self._reduce(self.strategy.run(self._replica_eval, args=(x, y)))


def accumulate(total: dict | None, batch: dict) -> dict:
    batch = {k: np.asarray(v) for k, v in batch.items()}
    if total is None:
        return batch
    return {k: total[k] + batch[k] for k in total}
