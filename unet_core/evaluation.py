"""Overlap and distance metrics of a predicted mask against ground truth, in millimetres.

Masks are boolean arrays on the same voxel grid; `spacing` is the voxel size (mm) along each
axis. Conventions: both empty -> Dice 1, IoU 1, HD95 0; exactly one empty -> Dice 0, IoU 0,
HD95 infinite (reported as NaN in tables).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred.astype(bool), truth.astype(bool)
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else float(2 * (p & t).sum() / total)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred.astype(bool), truth.astype(bool)
    union = (p | t).sum()
    return 1.0 if union == 0 else float((p & t).sum() / union)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)


def hausdorff95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the mask surfaces, in mm."""
    p, t = pred.astype(bool), truth.astype(bool)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float("inf")
    sp, st = _surface(p), _surface(t)
    to_t = ndimage.distance_transform_edt(~st, sampling=spacing)
    to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    distances = np.concatenate([to_t[sp], to_p[st]])
    return float(np.percentile(distances, 95))


def evaluate_masks(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> dict:
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    hd = hausdorff95(pred, truth, spacing)
    return {"dice": dice(pred, truth), "iou": iou(pred, truth), "hd95_mm": hd if np.isfinite(hd) else float("nan"),
            "pred_voxels": int(pred.sum()), "truth_voxels": int(truth.sum())}
