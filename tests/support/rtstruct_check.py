"""Checks of RT Structure Sets for the tests: the contours of each ROI put back on a volume grid
through patient coordinates and filled by `support.contour_raster` (independently of how they
were written), and what the RTSTRUCT must reference."""
from __future__ import annotations

import numpy as np
import pydicom

from support.contour_raster import read_back

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def roi_masks(ds: pydicom.Dataset, affine_ras: np.ndarray, shape: tuple[int, int, int],
              combine: str = "xor") -> dict[str, np.ndarray]:
    """ROI name -> bool mask on the grid (RAS affine, (i, j, k) shape): each contour's points are
    mapped to grid indices; they must lie in one grid slice k (within 1e-3 voxel), and the
    slice's contours are combined by `combine` ("xor", "or" or "nonzero")."""
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    to_grid = np.linalg.inv(affine_ras) @ LPS_TO_RAS
    out = {}
    for roi in ds.ROIContourSequence:
        per_slice: dict[int, list[np.ndarray]] = {}
        for contour in roi.get("ContourSequence", []):
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            points = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
            assert len(points) == int(contour.NumberOfContourPoints)
            ijk = (to_grid @ np.c_[points, np.ones(len(points))].T)[:3].T
            k = np.round(ijk[:, 2])
            assert np.abs(ijk[:, 2] - k).max() < 1e-3 and len(set(k.tolist())) == 1, "contour off a slice plane"
            per_slice.setdefault(int(k[0]), []).append(ijk[:, :2])
        mask = np.zeros(shape, bool)
        for k, polygons in per_slice.items():
            mask[:, :, k] = read_back(polygons, shape[:2], combine)
        out[names[int(roi.ReferencedROINumber)]] = mask
    return out
