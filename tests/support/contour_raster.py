"""An even-odd rasteriser of closed planar polygons at voxel centres, for the tests of
`unet_core.io.dicom.contours` (written from the definition, sharing no code with it): a centre
(i, j) is inside a polygon when a ray from it towards +i crosses the polygon's edges an odd
number of times."""
from __future__ import annotations

import numpy as np


def polygon_inside(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool (i, j) grid of `shape`: voxel centres inside the closed polygon (n, 2) of (i, j)
    points, by the even-odd rule, row by row. A centre lying on an edge fails the test (it is
    ambiguous)."""
    p = np.asarray(polygon, float)
    x1, y1 = p[:, 0], p[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    inside = np.zeros(shape, bool)
    centres = np.arange(shape[0], dtype=float)
    flat = y1 == y2
    for j in range(max(0, int(np.ceil(p[:, 1].min()))), min(shape[1] - 1, int(np.floor(p[:, 1].max()))) + 1):
        on_flat = flat & (y1 == j)
        for a, b in zip(x1[on_flat].tolist(), x2[on_flat].tolist(), strict=True):
            assert not ((centres >= min(a, b)) & (centres <= max(a, b))).any(), "a voxel centre lies on a contour"
        crosses = ~flat & ((y1 > j) != (y2 > j))
        xs = np.sort(x1[crosses] + (j - y1[crosses]) * (x2[crosses] - x1[crosses]) / (y2[crosses] - y1[crosses]))
        assert not np.isin(xs, centres).any(), "a voxel centre lies on a contour"
        inside[:, j] = (len(xs) - np.searchsorted(xs, centres, side="right")) % 2 == 1
    return inside


def read_back(polygons: list[np.ndarray], shape: tuple[int, int], combine: str = "xor") -> np.ndarray:
    """A slice's polygons combined as readers do: "xor" (even-odd across polygons) or "or"."""
    out = np.zeros(shape, bool)
    for polygon in polygons:
        inside = polygon_inside(polygon, shape)
        out = out ^ inside if combine == "xor" else out | inside
    return out
