"""The native recipe's model input: a case's slices normalised, then resampled to the target spacing.

Normalisation comes first (on the whole image, so a per-image z-score sees all of it), then each
slice is resampled to `target_shape` with `resize_linear` (images) or `resize_nearest` (masks) on
half-pixel centres, as nnU-Net's preprocessing normalises before it resamples. Training shards and
inference use these same functions, so their inputs cannot disagree.

Axes: slices are (n, H, W) with H along the canonical i axis; model input is (n, H', W', C) with
the 2.5D context slices as channels (slice i gets slices i-c..i+c, edges repeated).
"""
from __future__ import annotations

import numpy as np

from unet_core.config import PreprocessConfig
from unet_core.errors import ConfigError
from unet_core.preprocessing import normalise, resize_linear, resize_nearest
from unet_core.recipe.resample import target_shape


def with_context(x: np.ndarray, context: int) -> np.ndarray:
    """(n, H, W) -> (n, H, W, 1 + 2 * context): neighbouring slices as channels, edges repeated."""
    if context == 0:
        return x[..., None]
    n = x.shape[0]
    idx = np.clip(np.arange(n)[:, None] + np.arange(-context, context + 1)[None, :], 0, n - 1)
    return np.moveaxis(x[idx], 1, -1)


def native_model_input(slices: np.ndarray, spacing: tuple[float, float], cfg: PreprocessConfig) -> np.ndarray:
    """(n, H, W) raw intensities at `spacing` mm (along H, W) -> (n, H', W', C) float32, normalised,
    at `cfg.target_spacing` (or the slices' own grid when it is None)."""
    if slices.ndim != 3:
        raise ConfigError(f"expected (n, H, W) slices, got shape {slices.shape}")
    x = normalise(slices, cfg)
    shape = target_shape(slices.shape[1:], spacing, cfg.target_spacing)
    if shape != x.shape[1:]:
        x = resize_linear(x, shape)
    return with_context(x, cfg.context_slices)


def native_masks(masks: np.ndarray, spacing: tuple[float, float], cfg: PreprocessConfig) -> np.ndarray:
    """(n, H, W) integer labels -> (n, H', W') at the target spacing, nearest neighbour, dtype kept."""
    shape = target_shape(masks.shape[1:], spacing, cfg.target_spacing)
    return masks.copy() if shape == masks.shape[1:] else resize_nearest(masks, shape)


__all__ = ["native_masks", "native_model_input", "with_context"]
