"""Test volumes for RT Structure Sets: every geometry a DICOM SEG handles, with labels that hold
the hard cases of contouring: holes (an organ inside the body), an island inside a hole, single
voxels, a checkerboard (voxels touching at corners only), a hole touching the outside at a
corner, random speckle, a structure cut by the image border, a slice with nothing."""
from __future__ import annotations

import numpy as np
from pydicom.data import get_testdata_file

from unet_core.io.dicom.grouping import group_series
from unet_core.io.dicom.header import scan_header
from unet_core.io.dicom.series import read_series_with_sources
from unet_core.synthetic import Phantom, SeriesSpec, dicom_series

NAMES = ["background", "organ", "body", "specks", "absent"]  # "absent" never has a voxel
ORGAN, BODY, SPECKS = 1, 2, 3

GEOMETRIES = {
    "axial": SeriesSpec(rows=40, columns=48, n_slices=6, pixel_spacing=(0.7, 0.6), slice_step=2.5),
    "axial descending": SeriesSpec(rows=40, columns=48, n_slices=6, pixel_spacing=(0.7, 0.6), slice_step=2.5,
                                   descending=True),
    "flipped rows": SeriesSpec(rows=40, columns=40, n_slices=5, flip_rows=True),
    "coronal": SeriesSpec(orientation="coronal", rows=36, columns=40, n_slices=5),
    "sagittal": SeriesSpec(orientation="sagittal", rows=36, columns=40, n_slices=5),
    "oblique": SeriesSpec(orientation="oblique", rows=36, columns=36, n_slices=5),
    # far from the origin with an awkward spacing: every DS value needs rounding to fit 16 characters
    "far off centre": SeriesSpec(rows=32, columns=32, n_slices=4, pixel_spacing=(0.976563, 0.976563),
                                 slice_step=1.25, center=(-12345.678, 23456.789, -9876.54321)),
}
ENHANCED = "eCT_Supplemental.dcm"  # pydicom's enhanced CT: 2 frames of 512 x 512, stored feet first


def hard_plane(n_i: int, n_j: int, k: int, seed: int) -> np.ndarray:
    """uint8 (i, j) labels of one slice (n_i, n_j >= 24) with the hard cases, shifted with k."""
    rng = np.random.default_rng(seed * 1000 + k)
    ii, jj = np.meshgrid(np.arange(n_i), np.arange(n_j), indexing="ij")
    ci, cj = n_i / 2 + (k % 3) - 1, n_j / 2 + (k % 2)
    out = np.zeros((n_i, n_j), np.uint8)
    out[((ii - ci) / (0.56 * n_i)) ** 2 + ((jj - cj) / (0.38 * n_j)) ** 2 < 1] = BODY  # cut by the left/right border
    d = np.hypot(ii - ci, jj - cj) * 24 / min(n_i, n_j)
    out[d < 8] = ORGAN  # a hole in the body
    out[(d >= 2.5) & (d < 4.5)] = 0  # a hole in the organ ...
    out[d < 2.5] = BODY  # ... with an island of body in it
    r = rng.random((6, 6)) < 0.5  # speckle of background in the body, beside the organ
    patch = out[int(ci + 0.3 * n_i) - 6:int(ci + 0.3 * n_i), int(cj) - 3:int(cj) + 3]
    patch[r[:patch.shape[0], :patch.shape[1]] & (patch == BODY)] = 0
    out[1:5, 1:5] = np.indices((4, 4)).sum(axis=0) % 2 * SPECKS  # a checkerboard
    block = np.full((4, 4), SPECKS, np.uint8)
    block[0, 0] = block[1, 1] = 0  # a hole touching the outside at a corner
    out[n_i - 6:n_i - 2, 1:5] = block
    out[2, n_j - 3] = SPECKS  # single voxels: in the background ...
    out[int(ci), int(cj - 0.3 * n_j)] = SPECKS  # ... and in the body (a one-voxel hole in it)
    return out


def hard_labels(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """uint8 (i, j, k) labels: `hard_plane` on every slice but the first, which stays empty."""
    out = np.zeros(shape, np.uint8)
    for k in range(1, shape[2]):
        out[:, :, k] = hard_plane(shape[0], shape[1], k, seed)
    return out


def read_files(files: list[tuple[str, bytes]]):
    """[(volume, sources)] of files given as (uri, bytes)."""
    groups, aside = group_series([scan_header(data, uri) for uri, data in files])
    assert not aside, aside
    blobs = dict(files)
    return [read_series_with_sources(g, [blobs[u] for u in g.uris]) for g in groups]


def series_files(name: str, seed: int = 3, **kw) -> list[tuple[str, bytes]]:
    """(file name, bytes) of the test series of a geometry (GEOMETRIES or ENHANCED)."""
    if name == ENHANCED:
        path = get_testdata_file(ENHANCED)
        with open(path, "rb") as f:
            return [("enhanced.dcm", f.read())]
    files, _, _ = dicom_series(Phantom.random(seed), GEOMETRIES[name], seed=seed, noise=False, **kw)
    return files


CASES = [*GEOMETRIES, ENHANCED]
