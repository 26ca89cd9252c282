"""A Keras layer that kills its own process when a slice of its input is saturated (every value
1.0, which the abdomen window makes of a volume at 3000 HU): a model that deterministically crashes
on one marked volume. A bundle names this module in `keras_modules`, so the predictor imports it."""
from __future__ import annotations

import os

import keras
import tensorflow as tf

EXIT_CODE = 17


@keras.saving.register_keras_serializable(package="unet_tests")
class KillOnSaturatedSlice(keras.layers.Layer):
    def call(self, x):
        def check(v):
            flat = v.numpy().reshape(v.shape[0], -1)
            if len(flat) and (flat.min(axis=1) >= 1.0).any():
                os._exit(EXIT_CODE)
            return v

        y = tf.py_function(check, [x], Tout=x.dtype)
        y.set_shape(x.shape)
        return y
