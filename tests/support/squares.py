"""A tiny learnable segmentation batch for model and step tests: 8 slices of 32 x 32, each a
bright 10 x 10 square on a dim noisy background."""
from __future__ import annotations

import numpy as np


def squares():
    """(x, y) as tf.Tensors: x float32 (8, 32, 32, 1) images, y float32 (8, 32, 32, 1) masks."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    y = np.zeros((8, 32, 32, 1), np.float32)
    for i in range(8):
        r, c = rng.integers(4, 18, 2)
        y[i, r:r + 10, c:c + 10] = 1
    x = (y * 0.6 + 0.2 + rng.normal(0, 0.05, y.shape)).astype(np.float32)
    return tf.constant(x), tf.constant(y)
