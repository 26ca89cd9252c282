"""The ceiling of a recipe: the best mask a perfect model could give at that recipe's resolution.

A perfect model reproduces exactly the labels it was trained on, which are the truth taken to the
model's grid as prepare takes them (nearest neighbour: `resize_nearest` to input_size x
input_size for the seed recipe, to the target spacing's grid for the native recipe). Inference
then brings its probabilities back to the source grid linearly and thresholds them at 0.5 (binary)
or takes the argmax (labels), as `unet segment` does. The ceiling mask is that round trip of the
truth; its Dice against the truth is what no model of that recipe can beat.

Axes: labels (n, H, W) canonical slices, spacing (mm along H, mm along W).
"""
from __future__ import annotations

import numpy as np

from unet_core.config import PreprocessConfig
from unet_core.preprocessing import resize_linear, resize_nearest
from unet_core.recipe.resample import target_shape


def model_grid(shape: tuple[int, int], spacing: tuple[float, float], pre: PreprocessConfig) -> tuple[int, int]:
    """(H', W') the model sees a slice of `shape` at `spacing` as, under the recipe."""
    if pre.recipe == "seed":
        return pre.input_size, pre.input_size
    return target_shape(shape, spacing, pre.target_spacing)


def ceiling_labels(labels: np.ndarray, spacing: tuple[float, float], pre: PreprocessConfig) -> np.ndarray:
    """(n, H, W) uint8 labels 0..K -> (n, H, W) uint8: the truth through the recipe's grid and back."""
    h, w = labels.shape[1:]
    grid = model_grid((h, w), spacing, pre)
    down = resize_nearest(labels, grid)
    k = int(labels.max())
    if k <= 1:
        return (resize_linear(down.astype(np.float32), (h, w)) > 0.5).astype(np.uint8)
    onehot = np.stack([(down == c).astype(np.float32) for c in range(k + 1)], axis=1)  # (n, K+1, H', W')
    return np.argmax(resize_linear(onehot, (h, w)), axis=1).astype(np.uint8)


__all__ = ["ceiling_labels", "model_grid"]
