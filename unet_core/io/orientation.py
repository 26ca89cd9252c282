"""Orientation, settled once. Nothing outside `unet_core/io/` transposes or flips voxel axes.

- DICOM patient coordinates are LPS; NIfTI / nibabel world coordinates are RAS. `LPS_TO_RAS`
  negates x and y.
- The model sees slices of the *canonical* orientation: voxel axes permuted and flipped (no
  resampling) so that they point to R, A, S as closely as possible. `to_canonical` and
  `from_canonical` are exact inverses, so a mask computed canonically lands back on the source
  grid voxel for voxel.
"""
from __future__ import annotations

import numpy as np
from nibabel import orientations as nio

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def dicom_affine(
    row_cosine: np.ndarray,
    column_cosine: np.ndarray,
    pixel_spacing: tuple[float, float],
    first_position: np.ndarray,
    slice_step: np.ndarray,
) -> np.ndarray:
    """RAS affine of a voxel array indexed (column i, row j, slice k).

    DICOM PS3.3 C.7.6.2.1.1: P(i, j) = S + X * dc * i + Y * dr * j, with X the row cosine (the
    direction of increasing column index), Y the column cosine, dr = PixelSpacing[0] (between
    rows) and dc = PixelSpacing[1] (between columns). Slice k adds k * slice_step (a vector in
    mm, from one slice position to the next).
    """
    dr, dc = float(pixel_spacing[0]), float(pixel_spacing[1])
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(row_cosine, float) * dc
    lps[:3, 1] = np.asarray(column_cosine, float) * dr
    lps[:3, 2] = np.asarray(slice_step, float)
    lps[:3, 3] = np.asarray(first_position, float)
    return LPS_TO_RAS @ lps


def canonical_ornt(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation (3, 2) taking the voxel axes to the closest RAS axes."""
    return nio.io_orientation(affine)


def to_canonical(voxels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(voxels, affine) permuted / flipped to closest-RAS order. Voxels may carry extra
    trailing axes. Returns views where possible."""
    ornt = canonical_ornt(affine)
    out = nio.apply_orientation(voxels, ornt)
    new_affine = affine @ nio.inv_ornt_aff(ornt, voxels.shape[:3])
    return out, new_affine


def canonical_grid(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, affine) of the canonical grid of a source grid, without touching voxels."""
    ornt = canonical_ornt(affine)
    new_shape = tuple(int(shape[int(i)]) for i in np.argsort(ornt[:, 0]))
    return new_shape, affine @ nio.inv_ornt_aff(ornt, shape[:3])


def from_canonical(canonical: np.ndarray, source_affine: np.ndarray, source_shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `to_canonical` for an array computed on the canonical grid of a source with
    this affine and shape: returns it on the source grid."""
    ornt = canonical_ornt(source_affine)
    back = nio.apply_orientation(canonical, nio.ornt_transform(nio.axcodes2ornt("RAS"), ornt))
    if back.shape[:3] != tuple(source_shape[:3]):
        raise ValueError(f"canonical array {canonical.shape} does not come from a {source_shape} grid")
    return np.ascontiguousarray(back)


def axis_codes(affine: np.ndarray) -> str:
    return "".join(nio.aff2axcodes(affine))
