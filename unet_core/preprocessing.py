"""Preprocessing as pure functions on numpy arrays.

Axis convention: a stack of 2D slices is (n, H, W); a single slice is (H, W); channels, when
present, are last. Resizing uses half-pixel centres (as `tf.image.resize` without antialiasing),
so resizing to the model size and back returns exactly to the source grid.
"""
from __future__ import annotations

import numpy as np

from unet_core.config import PreprocessConfig
from unet_core.errors import ConfigError

# A constant image z-scores to zeros rather than to a division by zero (nnU-Net uses 1e-8 too).
ZSCORE_MIN_STD = 1e-8


def window_ct(hu: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Clip Hounsfield units to [lower, upper] and scale to [0, 1] as float32."""
    if not lower < upper:
        raise ConfigError(f"window lower {lower} must be below upper {upper}")
    out = (np.asarray(hu, dtype=np.float32) - np.float32(lower)) / np.float32(upper - lower)
    return np.clip(out, 0.0, 1.0, out=out)


def normalise_uint(image: np.ndarray, bits: int) -> np.ndarray:
    """The seed's normalisation: 8-bit divided by 255, 16-bit by 65535, as float32."""
    if bits not in (8, 16):
        raise ConfigError(f"bits must be 8 or 16, got {bits}")
    return np.asarray(image, dtype=np.float32) / np.float32(255.0 if bits == 8 else 65535.0)


def normalise(voxels: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Intensities as the bundle's preprocessing says, float32 of the input's shape.

    "window" (the seed's): CT clipped to the window and scaled to [0, 1]; uint8 / uint16 divided
    by 255 / 65535. "ct_foreground": clipped to the training foreground's 0.5 / 99.5 percentiles,
    then (x - mean) / std with its mean and std (nnU-Net's CT scheme). "zscore": (x - mean) / std
    with the mean and std of `voxels` itself, so pass one whole image (a volume's slices
    (n, H, W)), never a part of one.
    """
    if cfg.normalization == "ct_foreground":
        x = np.clip(np.asarray(voxels, dtype=np.float32), np.float32(cfg.foreground_p005),
                    np.float32(cfg.foreground_p995))
        x -= np.float32(cfg.foreground_mean)
        x /= np.float32(cfg.foreground_std)
        return x
    if cfg.normalization == "zscore":
        x = np.asarray(voxels, dtype=np.float32)
        # Statistics in float64: a float32 sum over a large volume loses digits.
        mean, std = float(np.mean(x, dtype=np.float64)), float(np.std(x, dtype=np.float64))
        return (x - np.float32(mean)) / np.float32(max(std, ZSCORE_MIN_STD))
    if cfg.modality == "CT":
        return window_ct(voxels, *cfg.window_bounds())
    return normalise_uint(voxels, 8 if cfg.modality == "uint8" else 16)


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _nearest_taps(n_in: int, n_out: int) -> np.ndarray:
    src = np.floor((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out)).astype(np.intp)
    return np.minimum(src, n_in - 1)


def resize_linear(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (..., H, W) float arrays to (..., size[0], size[1]) float32."""
    x = np.asarray(images, dtype=np.float32)
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x.copy()
    i0, i1, wy = _linear_taps(h, size[0])
    x = x[..., i0, :] * (1.0 - wy)[:, None] + x[..., i1, :] * wy[:, None]
    j0, j1, wx = _linear_taps(w, size[1])
    return x[..., j0] * (1.0 - wx) + x[..., j1] * wx


def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (..., H, W) label arrays; the dtype is kept."""
    x = np.asarray(labels)
    h, w = x.shape[-2:]
    return x[..., _nearest_taps(h, size[0]), :][..., _nearest_taps(w, size[1])]


def slices_to_model_input(slices: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """(n, H, W) raw intensities -> (n, size, size, channels) float32 model input.

    With `context_slices = c`, slice i is fed with slices i-c..i+c as channels (edges repeat).
    """
    if slices.ndim != 3:
        raise ConfigError(f"expected (n, H, W) slices, got shape {slices.shape}")
    x = resize_linear(normalise(slices, cfg), (cfg.input_size, cfg.input_size))
    c = cfg.context_slices
    if c == 0:
        return x[..., None]
    n = x.shape[0]
    idx = np.clip(np.arange(n)[:, None] + np.arange(-c, c + 1)[None, :], 0, n - 1)
    return np.moveaxis(x[idx], 1, -1)


def probabilities_to_labels(prob: np.ndarray, threshold: float) -> np.ndarray:
    """(..., 1) sigmoid -> uint8 {0, 1} by threshold; (..., K) softmax -> uint8 argmax labels."""
    if prob.shape[-1] == 1:
        return (prob[..., 0] > threshold).astype(np.uint8)
    return np.argmax(prob, axis=-1).astype(np.uint8)


def probabilities_to_grid(prob: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Model output (n, s, s, K) -> (n, H, W, K) on the source slice grid, linearly."""
    return np.moveaxis(resize_linear(np.moveaxis(prob, -1, 1), size), 1, -1)


def slices_at_target(normalised: np.ndarray, shape: tuple[int, int], context_slices: int,
                     ks: range | None = None) -> np.ndarray:
    """The native recipe's model slices: (n, H, W) normalised slices -> (len(ks), shape[0],
    shape[1], 1 + 2c) float32, resampled bilinearly (half-pixel centres) to `shape` (the slice grid
    at the target spacing, `recipe.resample.target_shape`), slice k with slices k-c..k+c as
    channels (edges repeat, as `slices_to_model_input`). `ks` picks the slices (all by default);
    only they and their neighbours are resampled, so a volume can be prepared a run of slices at a
    time."""
    n = normalised.shape[0]
    ks = range(n) if ks is None else ks
    c = context_slices
    lo, hi = max(0, ks.start - c), min(n, ks.stop + c)
    x = resize_linear(normalised[lo:hi], shape)
    idx = np.clip(np.arange(ks.start, ks.stop)[:, None] + np.arange(-c, c + 1)[None, :], 0, n - 1) - lo
    return np.moveaxis(x[idx], 1, -1)
