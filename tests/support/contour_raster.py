"""A rasteriser of closed planar polygons at voxel centres for the tests of
`unet_core.io.dicom.contours`, written from the definitions and sharing no code with it: a
centre (i, j) is inside a polygon by the even-odd rule when a ray from it towards +i crosses the
polygon's edges an odd number of times, by the non-zero rule when their signed count is not 0."""
from __future__ import annotations

import numpy as np


def polygon_winding(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """int (i, j) grid of `shape`: the winding number of the closed polygon (n, 2) of (i, j)
    points around each voxel centre, row by row (a crossing of the ray towards +i counts +1 when
    the edge goes towards +j, -1 otherwise). A centre lying on an edge fails the test (it is
    ambiguous)."""
    p = np.asarray(polygon, float)
    x1, y1 = p[:, 0], p[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    winding = np.zeros(shape, np.int64)
    centres = np.arange(shape[0], dtype=float)
    flat = y1 == y2
    for j in range(max(0, int(np.ceil(p[:, 1].min()))), min(shape[1] - 1, int(np.floor(p[:, 1].max()))) + 1):
        on_flat = flat & (y1 == j)
        for a, b in zip(x1[on_flat].tolist(), x2[on_flat].tolist(), strict=True):
            assert not ((centres >= min(a, b)) & (centres <= max(a, b))).any(), "a voxel centre lies on a contour"
        crosses = ~flat & ((y1 > j) != (y2 > j))
        xs = x1[crosses] + (j - y1[crosses]) * (x2[crosses] - x1[crosses]) / (y2[crosses] - y1[crosses])
        assert not np.isin(xs, centres).any(), "a voxel centre lies on a contour"
        signs = np.where(y2[crosses] > y1[crosses], 1, -1)
        winding[:, j] = ((xs[None, :] > centres[:, None]) * signs[None, :]).sum(axis=1)
    return winding


def polygon_inside(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool (i, j) grid of `shape`: voxel centres inside the closed polygon by the even-odd rule
    (the winding number is odd)."""
    return polygon_winding(polygon, shape) % 2 == 1


def read_back(polygons: list[np.ndarray], shape: tuple[int, int], combine: str = "xor") -> np.ndarray:
    """A slice's polygons combined as readers do: "xor" (even-odd across polygons), "or" (each
    polygon filled even-odd, then their union) or "nonzero" (the winding numbers of all the
    slice's polygons summed, inside where not zero)."""
    if combine == "nonzero":
        return sum((polygon_winding(p, shape) for p in polygons), np.zeros(shape, np.int64)) != 0
    out = np.zeros(shape, bool)
    for polygon in polygons:
        inside = polygon_inside(polygon, shape)
        out = out ^ inside if combine == "xor" else out | inside
    return out
