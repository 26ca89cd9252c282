"""Slices to a target in-plane spacing and probabilities back, on half-pixel centres.

A slice of n pixels at spacing s becomes `target_shape` pixels covering the same physical extent
(the effective spacing is n * s / n', within half a pixel of the target); resizing back with the
same convention lands exactly on the source grid, as `preprocessing.resize_linear` does for the
seed's fixed input size. Axis convention: (..., H, W) with H along the canonical i axis.
"""
from __future__ import annotations

import numpy as np

from unet_core.errors import ConfigError


def target_shape(shape: tuple[int, int], spacing: tuple[float, float], target: float | None) -> tuple[int, int]:
    """(H, W) at `spacing` (mm along H, W) -> (H', W') at `target` mm; None keeps the shape."""
    if target is None:
        return int(shape[0]), int(shape[1])
    if not target > 0 or min(spacing) <= 0:
        raise ConfigError(f"spacing must be positive: source {spacing}, target {target}")
    return tuple(max(1, int(round(n * s / target))) for n, s in zip(shape, spacing, strict=True))  # type: ignore[return-value]


def in_plane_spacing(affine: np.ndarray) -> tuple[float, float]:
    """The (i, j) voxel sizes in mm of a canonical grid's affine."""
    sx, sy = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :2], axis=0)
    return float(sx), float(sy)


def resample_slices(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(n, H, W, C) float -> (n, shape[0], shape[1], C) float32, bilinear on half-pixel centres
    (`preprocessing.resize_linear`). Used both ways: model input to the target grid, and
    probabilities (never labels) back to the source slice grid, so a slice that went to the target
    spacing and back lands on its own pixels."""
    from unet_core.preprocessing import resize_linear  # here: preprocessing may import this module

    x = np.asarray(x)
    if x.ndim != 4:
        raise ConfigError(f"expected (n, H, W, C) slices, got shape {x.shape}")
    if tuple(x.shape[1:3]) == tuple(shape):
        return x.astype(np.float32, copy=False)
    return np.moveaxis(resize_linear(np.moveaxis(x, -1, 1), shape), 1, -1)
