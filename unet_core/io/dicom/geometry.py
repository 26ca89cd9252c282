"""Slice geometry of a DICOM series as pure functions on numbers (no pydicom here).

Slices are ordered by their position along the slice normal (row cosine x column cosine), never
by InstanceNumber. The step between slices must be even: a missing slice (a gap larger than the
step), a duplicate position and gantry tilt (slice positions that drift off the normal) are
refused with `SeriesGeometryError`, so no volume is ever built with a wrong z axis. Tilted
series are refused rather than resampled: resample them first (for example with dcm2niix).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unet_core.errors import SeriesGeometryError
from unet_core.io.orientation import dicom_affine

# Relative tolerance on the slice step: 10% catches any missing slice (a 100% gap).
STEP_TOLERANCE = 0.10
DUPLICATE_MM = 1e-3
TILT_TOLERANCE_DEGREES = 0.2
ORIENTATION_DECIMALS = 4  # IOP values rounded for grouping (about 0.006 degrees)


@dataclass(frozen=True)
class SeriesGeometry:
    order: np.ndarray  # indices of the input slices in position order
    affine: np.ndarray  # RAS affine of the (column, row, slice) voxel array
    slice_spacing: float


def cosines(iop) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row cosine, column cosine, normal) from ImageOrientationPatient, normalised."""
    v = np.asarray(iop, dtype=float).reshape(2, 3)
    norms = np.linalg.norm(v, axis=1)
    if v.shape != (2, 3) or np.any(norms < 1e-6):
        raise SeriesGeometryError(f"ImageOrientationPatient {list(iop)} is not two direction vectors")
    row, col = v[0] / norms[0], v[1] / norms[1]
    if abs(float(row @ col)) > 1e-3:
        raise SeriesGeometryError(f"ImageOrientationPatient {list(iop)}: row and column are not orthogonal")
    normal = np.cross(row, col)
    return row, col, normal / np.linalg.norm(normal)


def orientation_key(iop) -> tuple[float, ...]:
    return tuple(np.round(np.asarray(iop, dtype=float), ORIENTATION_DECIMALS).tolist())


def series_geometry(
    iop,
    positions: np.ndarray,
    pixel_spacing: tuple[float, float],
    name: str,
    single_slice_thickness: float | None = None,
) -> SeriesGeometry:
    """Order slices and build the affine; `name` (a URI or series label) goes into every error."""
    row, col, normal = cosines(iop)
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    n = len(positions)
    if n == 1:
        step = normal * float(single_slice_thickness or 1.0)
        return SeriesGeometry(np.array([0]), dicom_affine(row, col, pixel_spacing, positions[0], step), float(np.linalg.norm(step)))

    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, ordered = along[order], positions[order]
    gaps = np.diff(along)
    dup = np.flatnonzero(gaps < DUPLICATE_MM)
    if dup.size:
        raise SeriesGeometryError(
            f"{name}: {dup.size} duplicate slice position(s), first at {along[dup[0]]:.3f} mm along "
            "the normal; the series mixes acquisitions (split it by AcquisitionNumber) or holds copies"
        )
    step = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - step) > STEP_TOLERANCE * step)
    if bad.size:
        g = bad[0]
        kind = "missing slice(s)" if gaps[g] > step else "uneven slice spacing"
        raise SeriesGeometryError(
            f"{name}: {kind}: gap of {gaps[g]:.3f} mm between slices at {along[g]:.3f} and "
            f"{along[g + 1]:.3f} mm where the step is {step:.3f} mm ({bad.size} uneven gap(s)); "
            "re-export the complete series"
        )
    step_vector = (ordered[-1] - ordered[0]) / (n - 1)
    cos_tilt = float(step_vector @ normal) / float(np.linalg.norm(step_vector))
    tilt = float(np.degrees(np.arccos(np.clip(cos_tilt, -1.0, 1.0))))
    if tilt > TILT_TOLERANCE_DEGREES:
        raise SeriesGeometryError(
            f"{name}: gantry tilt of {tilt:.2f} degrees (slice positions drift off the slice "
            "normal); resample the series to an untilted grid first (e.g. dcm2niix)"
        )
    return SeriesGeometry(order, dicom_affine(row, col, pixel_spacing, ordered[0], step_vector), step)
