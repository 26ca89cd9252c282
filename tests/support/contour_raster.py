"""An even-odd rasteriser of closed planar polygons at voxel centres, for the tests of
`unet_core.io.dicom.contours` (written from the definition, sharing no code with it): a centre
(i, j) is inside a polygon when a ray from it towards +i crosses the polygon's edges an odd
number of times."""
from __future__ import annotations

import numpy as np


def polygon_inside(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool (i, j) grid of `shape`: voxel centres inside the closed polygon (n, 2) of (i, j)
    points, by the even-odd rule. A centre lying on an edge fails the test (it is ambiguous)."""
    p = np.asarray(polygon, float)
    q = np.roll(p, -1, axis=0)
    ii, jj = np.meshgrid(np.arange(shape[0], dtype=float), np.arange(shape[1], dtype=float), indexing="ij")
    inside = np.zeros(shape, bool)
    for (x1, y1), (x2, y2) in zip(p.tolist(), q.tolist(), strict=True):
        if y1 == y2:
            on = (jj == y1) & (ii >= min(x1, x2)) & (ii <= max(x1, x2))
            assert not on.any(), "a voxel centre lies on a contour"
            continue
        crosses = (y1 > jj) != (y2 > jj)
        x = x1 + (jj - y1) * (x2 - x1) / (y2 - y1)
        assert not (crosses & (x == ii)).any(), "a voxel centre lies on a contour"
        inside ^= crosses & (x > ii)
    return inside


def read_back(polygons: list[np.ndarray], shape: tuple[int, int], combine: str = "xor") -> np.ndarray:
    """A slice's polygons combined as readers do: "xor" (even-odd across polygons) or "or"."""
    out = np.zeros(shape, bool)
    for polygon in polygons:
        inside = polygon_inside(polygon, shape)
        out = out ^ inside if combine == "xor" else out | inside
    return out
