"""The ceiling of a recipe: the best mask a perfect model could give at that recipe's resolution.

A perfect model reproduces exactly the labels it was trained on, which are the truth taken to the
model's grid as prepare takes them (nearest neighbour: `resize_nearest` to input_size x
input_size for the seed recipe, to the target spacing's grid for the native recipe). Inference
then brings its probabilities back to the source grid linearly and thresholds them at 0.5 (binary)
or takes the argmax (labels), as `unet segment` does. The ceiling mask is that round trip of the
truth; its Dice against the truth is what no model of that recipe can beat.

That ceiling is not an upper bound. A model's probabilities are soft where its training labels
were ambiguous (a thin shell half inside a coarse pixel), and soft probabilities taken back
linearly recover thin structures that hard labels lose: on `unet bench quality` a trained seed
recipe model beat it (docs/benchmarks.md). `coverage_ceiling_labels` is the other bound a recipe's
grid sets: a model that predicts, in each model pixel, the fraction of it the structure covers
(area-weighted down, then back as segment does). Both are printed by the bench.

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


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64: the fraction of output pixel i covered by input pixel j, both grids
    spanning the same extent (half-pixel centres, as `resize_linear`); rows sum to 1."""
    e_in, e_out = np.linspace(0.0, 1.0, n_in + 1), np.linspace(0.0, 1.0, n_out + 1)
    overlap = np.minimum(e_in[None, 1:], e_out[1:, None]) - np.maximum(e_in[None, :-1], e_out[:-1, None])
    return np.clip(overlap, 0.0, None) * n_out


def coverage_ceiling_labels(labels: np.ndarray, spacing: tuple[float, float], pre: PreprocessConfig) -> np.ndarray:
    """(n, H, W) uint8 labels 0..K -> (n, H, W) uint8: each class's covered fraction of every
    model pixel, taken back linearly, thresholded at 0.5 (binary) or argmax (labels)."""
    h, w = labels.shape[1:]
    gh, gw = model_grid((h, w), spacing, pre)
    rows, cols = area_weights(h, gh), area_weights(w, gw)
    k = int(labels.max())
    classes = [1] if k <= 1 else list(range(k + 1))
    fractions = np.stack([np.einsum("ih,nhw,jw->nij", rows, (labels == c).astype(np.float64), cols)
                          for c in classes], axis=1).astype(np.float32)  # (n, classes, H', W')
    back = resize_linear(fractions, (h, w))
    if k <= 1:
        return (back[:, 0] > 0.5).astype(np.uint8)
    return np.argmax(back, axis=1).astype(np.uint8)


__all__ = ["area_weights", "ceiling_labels", "coverage_ceiling_labels", "model_grid"]
