"""The distributed step under the default strategy: it learns, and the GPU switches (mixed
precision, XLA) run and keep the weights float32 and finite."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from support.squares import squares
from unet_core.config import AugmentConfig, ModelConfig, TrainConfig
from unet_core.model import build_unet
from unet_core.model.losses import get_loss
from unet_core.training.state import make_optimizer, set_precision
from unet_core.training.step import DistributedSteps, accumulate, scores


@pytest.fixture(autouse=True)
def _float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("precision, xla", [("float32", False), ("mixed_float16", False), ("mixed_bfloat16", False),
                                            ("float32", True)])
def test_step_learns_under_each_switch(precision, xla):
    cfg = TrainConfig(precision=precision, xla=xla, learning_rate=3e-3)
    set_precision(cfg)
    keras.utils.set_random_seed(0)
    model = build_unet(ModelConfig(input_size=32, base_filters=4, depth=2, batch_norm=True, dropout=0.0))
    optimizer = make_optimizer(cfg)
    steps = DistributedSteps(model, optimizer, get_loss("bce_dice", 1), tf.distribute.get_strategy(), 8, 1,
                             AugmentConfig(enabled=False), jit_compile=xla)
    x, y = squares()
    losses = []
    for i in range(30):
        losses.append(scores(accumulate(None, steps.train_step(x, y, tf.constant([0, i], tf.int64))))["loss"])
    assert losses[-1] < 0.85 * losses[0], losses
    assert all(w.dtype == "float32" and np.isfinite(w.numpy()).all() for w in model.trainable_weights)
    if precision == "mixed_float16":
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    # the policy takes effect in training too: every conv / batch norm computes in it, the head in float32
    from unet_core.model.precision import compute_dtypes

    dtypes = compute_dtypes(model)
    want = precision.split("_")[-1]
    assert {n: d for n, d in dtypes.items() if n != "head"} == {n: want for n in dtypes if n != "head"}
    assert dtypes["head"] == "float32"
    val = scores(accumulate(None, steps.eval_step(x, y)), "val_")
    assert 0 <= val["val_dice_hard"] <= 1 and "val_mean_iou" in val
