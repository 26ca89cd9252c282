"""dcmrtstruct2nii (PyPI) as an independent reader of RT Structure Sets in the tests: its RTSTRUCT
reader, and its rasteriser (contour points to continuous indices through SimpleITK's image
geometry, scikit-image's polygon fill at voxel centres, a slice's contours combined by XOR), on
the image SimpleITK reads; the mask is put back on a volume grid through patient coordinates.

Two adaptations, both outside the rasterisation: dcmrtstruct2nii 5 (2023) calls
`pydicom.read_file`, an alias of `dcmread` that pydicom 3 removed, so the alias is given back for
the call; and its image reader (SimpleITK's series reader) turns an enhanced multi-frame object
into a 4D image (x, y, frames, 1), so a folder of one multi-frame object is read with
`SimpleITK.ReadImage`, which keeps its frames' geometry."""
from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pydicom

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@contextlib.contextmanager
def _read_file_alias():
    added = not hasattr(pydicom, "read_file")
    if added:
        pydicom.read_file = pydicom.dcmread
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its citation banner, printed on import
            yield
    finally:
        if added:
            del pydicom.read_file


def _image(image_dir: str):
    import SimpleITK as sitk

    names = sorted(os.listdir(image_dir))
    if len(names) == 1 and int(pydicom.dcmread(os.path.join(image_dir, names[0]), stop_before_pixels=True)
                               .get("NumberOfFrames", 1) or 1) > 1:
        return sitk.ReadImage(os.path.join(image_dir, names[0]))
    from dcmrtstruct2nii.adapters.input.image.dcminputadapter import DcmInputAdapter

    return DcmInputAdapter().ingest(image_dir)


def rasterise(rtstruct_path: str, image_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ROI name -> (uint8 mask with axes (x, y, z) of the image, 4x4 LPS affine of the image)."""
    import SimpleITK as sitk

    with _read_file_alias():
        from dcmrtstruct2nii.adapters.convert.rtstructcontour2mask import DcmPatientCoords2Mask
        from dcmrtstruct2nii.adapters.input.contours.rtstructinputadapter import RtStructInputAdapter

        image = _image(image_dir)
        structures = RtStructInputAdapter().ingest(rtstruct_path)
        affine = np.eye(4)
        affine[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
        affine[:3, 3] = image.GetOrigin()
        out = {}
        for structure in structures:
            if "sequence" not in structure:
                continue
            mask = DcmPatientCoords2Mask().convert(structure["sequence"], image, 0, 1)
            out[str(structure["name"])] = (sitk.GetArrayFromImage(mask).transpose(2, 1, 0), affine)
    return out


def on_grid(array: np.ndarray, affine_lps: np.ndarray, affine_ras: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The nonzero voxels of a reader's image put on a volume grid (RAS affine): every one must
    land on a grid point (within 1e-3 voxel) inside the grid."""
    out = np.zeros(shape, bool)
    idx = np.argwhere(array > 0)
    if len(idx) == 0:
        return out
    ijk = (np.linalg.inv(affine_ras) @ LPS_TO_RAS @ affine_lps @ np.c_[idx, np.ones(len(idx))].T)[:3].T
    rounded = np.round(ijk)
    if np.abs(ijk - rounded).max() > 1e-3:
        raise AssertionError("the reader's voxels fall between the grid points of the volume")
    rounded = rounded.astype(int)
    if not ((rounded >= 0).all() and (rounded < np.array(shape)).all()):
        raise AssertionError("the reader's voxels fall outside the volume grid")
    out[tuple(rounded.T)] = True
    return out
