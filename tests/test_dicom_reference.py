"""Geometry agrees with the reference converter dcm2niix (PyPI package) voxel for voxel."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from support.dicom_factory import write_series
from unet_core.io import read_volume
from unet_core.synthetic import SeriesSpec


def _dcm2niix() -> str:
    exe = shutil.which("dcm2niix") or os.path.join(os.path.dirname(sys.executable), "dcm2niix")
    if not os.path.exists(exe):
        pytest.fail("dcm2niix is not installed: it is part of the test extra (pip install -e '.[test]')")
    return exe


CASES = [
    SeriesSpec(orientation="axial"),
    SeriesSpec(orientation="axial", descending=True),
    SeriesSpec(orientation="coronal"),
    SeriesSpec(orientation="sagittal", descending=True),
    SeriesSpec(orientation="oblique"),
    SeriesSpec(orientation="axial", flip_rows=True),
    SeriesSpec(orientation="oblique", flip_rows=True, descending=True, pixel_spacing=(5.5, 6.5)),
]


@pytest.mark.parametrize("spec", CASES, ids=lambda s: f"{s.orientation}{'-desc' if s.descending else ''}{'-flip' if s.flip_rows else ''}")
def test_every_voxel_matches_dcm2niix(tmp_path, spec):
    spec = SeriesSpec(**{**spec.__dict__, "rows": 40, "columns": 48, "n_slices": 10})
    write_series(tmp_path / "dicom", spec)
    out = tmp_path / "ref"
    out.mkdir()
    proc = subprocess.run(
        [_dcm2niix(), "-z", "n", "-b", "n", "-f", "ref", "-o", str(out), str(tmp_path / "dicom")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ref = nib.load(glob.glob(str(out / "*.nii"))[0])
    ref_vox = np.asarray(ref.get_fdata())
    vol = read_volume(str(tmp_path / "dicom"))
    assert ref_vox.size == vol.voxels.size

    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ vol.affine[:3, :3].T + vol.affine[:3, 3]
    inv = np.linalg.inv(ref.affine)
    ref_ijk = np.round(world @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    assert ((ref_ijk >= 0) & (ref_ijk < ref_vox.shape)).all()
    ref_world = ref_ijk @ ref.affine[:3, :3].T + ref.affine[:3, 3]
    assert np.abs(ref_world - world).max() < 1e-3  # mm
    assert len(np.unique(ref_ijk, axis=0)) == len(ref_ijk)  # one-to-one
    np.testing.assert_array_equal(ref_vox[tuple(ref_ijk.T)], vol.voxels.reshape(-1))
