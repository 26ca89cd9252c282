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
