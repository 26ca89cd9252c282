"""Overlap and distance metrics of a predicted mask against ground truth, in millimetres.

Masks are boolean arrays on the same voxel grid; `spacing` is the voxel size (mm) along each
axis. Conventions: both empty -> Dice 1, IoU 1, HD95 0; exactly one empty -> Dice 0, IoU 0,
HD95 infinite (reported as NaN in tables).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from unet_core.errors import InputError
from unet_core.io import read_volume


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


def check_same_grid(pred, truth, truth_name: str) -> None:
    """A prediction and its ground truth must share the voxel grid (shape and affine, to 1e-3 mm)."""

    if pred.shape != truth.shape or not np.allclose(pred.affine, truth.affine, atol=1e-3):
        raise InputError(f"{truth_name}: grid {truth.shape} does not match the prediction's {pred.shape} "
                         "(or their affines differ)", uri=truth_name)


def evaluate_case(mask_uri: str, truth_uri: str, truth_labels: list[int] | None = None) -> dict:
    """One predicted mask against its ground truth: the metrics of `evaluate_masks`. Raises the
    item errors of reading either (and a grid mismatch as an InputError)."""

    pred, truth = read_volume(mask_uri), read_volume(truth_uri)
    check_same_grid(pred, truth, truth_uri)
    t = np.isin(truth.voxels, truth_labels) if truth_labels else truth.voxels > 0
    return evaluate_masks(pred.voxels > 0, t, pred.spacing)


def truth_names(row: dict) -> list[str]:
    """File names a volume's ground truth may have under a truth prefix: its volume id, or, for a
    NIfTI source, the source's own file name (truth masks are usually named like their images)."""
    names = [f"{row['volume_id']}.nii.gz", f"{row['volume_id']}.nii"]
    if row.get("format") == "nifti":
        stem = row["source"].rstrip("/").rsplit("/", 1)[-1]
        for suffix in (".gz", ".nii"):
            stem = stem[: -len(suffix)] if stem.lower().endswith(suffix) else stem
        names += [f"{stem}.nii.gz", f"{stem}.nii"]
    return names
