"""dcmrtstruct2nii (PyPI) as an independent reader of RT Structure Sets in the tests: SimpleITK
reads the image series' geometry, and each ROI's contours are rasterised with scikit-image's
polygon fill and combined by XOR, then written as NIfTI, read here with nibabel and put back on
a volume grid through patient coordinates.

dcmrtstruct2nii 5 (2023) calls `pydicom.read_file`, an alias that pydicom 3 removed; the alias
is given back (it was `dcmread` itself) for the call only."""
from __future__ import annotations

import contextlib
import io
import os

import nibabel as nib
import numpy as np
import pydicom


def rasterise(rtstruct_path: str, image_dir: str, out_dir: str) -> dict[str, nib.Nifti1Image]:
    """ROI name -> the NIfTI mask dcmrtstruct2nii writes for it on the image series' grid."""
    added = not hasattr(pydicom, "read_file")
    if added:
        pydicom.read_file = pydicom.dcmread
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its citation banner
            from dcmrtstruct2nii import dcmrtstruct2nii

            dcmrtstruct2nii(rtstruct_path, image_dir, out_dir, gzip=True, mask_foreground_value=1,
                            convert_original_dicom=False)
    finally:
        if added:
            del pydicom.read_file
    return {name[len("mask_"):-len(".nii.gz")]: nib.load(os.path.join(out_dir, name))
            for name in sorted(os.listdir(out_dir)) if name.startswith("mask_") and name.endswith(".nii.gz")}


def on_grid(image: nib.Nifti1Image, affine_ras: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The image's nonzero voxels on a volume grid (RAS affine): each must land on a grid point
    (within 1e-3 voxel) inside the grid."""
    array = np.asarray(image.dataobj)
    out = np.zeros(shape, bool)
    idx = np.argwhere(array > 0)
    if len(idx) == 0:
        return out
    ijk = (np.linalg.inv(affine_ras) @ image.affine @ np.c_[idx, np.ones(len(idx))].T)[:3].T
    rounded = np.round(ijk)
    if np.abs(ijk - rounded).max() > 1e-3:
        raise AssertionError("dcmrtstruct2nii's voxels fall between the grid points of the volume")
    rounded = rounded.astype(int)
    if not ((rounded >= 0).all() and (rounded < np.array(shape)).all()):
        raise AssertionError("dcmrtstruct2nii's voxels fall outside the volume grid")
    out[tuple(rounded.T)] = True
    return out
