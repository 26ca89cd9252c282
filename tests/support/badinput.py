"""A generator of bad input for the containment tests: each kind is a set of objects that a real
archive could hold, and the `error_type` the segment job must record for it.

`write_good(root)` writes the good volumes (two DICOM series and a NIfTI); `write_bad(root)` adds
every kind of bad input under `root/bad/<kind>/` and returns {kind: expected error_type}.
"""
from __future__ import annotations

import gzip
import io
import zipfile

import nibabel as nib
import numpy as np
import pydicom
from pydicom.uid import JPEG2000Lossless, generate_uid

from unet_core.io import storage
from unet_core.synthetic import Phantom, SeriesSpec, dicom_series, nifti_case, to_bytes

GOOD_SPEC = SeriesSpec(rows=64, columns=64, n_slices=12)
# A series whose slices come in two matrix sizes is split into one volume per size (as dcm2niix
# does); each part is segmented on its own grid. Not an error, but not one volume either.
SPLIT = "split_into_volumes"
NIFTI_AFFINE = np.diag([6.0, 6.0, 10.0, 1.0])


def write_good(root: str) -> int:
    for s, orientation in enumerate(["axial", "sagittal"]):
        spec = SeriesSpec(orientation=orientation, rows=64, columns=64, n_slices=12)
        for name, data in dicom_series(Phantom.random(40 + s), spec, seed=40 + s)[0]:
            storage.write_bytes(f"{root}/good/series{s}/{name}", data)
    image, _ = nifti_case(Phantom.random(45), NIFTI_AFFINE, (64, 64, 12), seed=45)
    storage.write_bytes(f"{root}/good/nifti/good_case.nii.gz", image)
    return 3


def _series(seed: int, spec: SeriesSpec = GOOD_SPEC) -> list[pydicom.Dataset]:
    files = dicom_series(Phantom.random(seed), spec, seed=seed)[0]
    return [pydicom.dcmread(io.BytesIO(data)) for _, data in files]


def _nifti(data: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    img = nib.Nifti1Image(data, NIFTI_AFFINE if affine is None else affine)
    return gzip.compress(img.to_bytes(), mtime=0)


def _declared_nifti(shape: tuple[int, ...], payload: bytes) -> bytes:
    """A NIfTI-1 header declaring `shape` (int16) followed by `payload` (not gzipped)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape(shape)
    hdr.set_sform(NIFTI_AFFINE, code=1)
    return hdr.binaryblock + b"\0" * 4 + payload


def bad_objects() -> dict[str, tuple[dict[str, bytes], str]]:
    """{kind: ({relative name: bytes}, expected error_type, or SPLIT)}."""
    kinds: dict[str, tuple[dict[str, bytes], str]] = {}

    def series_kind(kind: str, seed: int, fn, reason: str, spec: SeriesSpec = GOOD_SPEC) -> None:
        datasets = fn(_series(seed, spec))
        kinds[kind] = ({f"IM{i:03d}.dcm": to_bytes(ds) for i, ds in enumerate(datasets)}, reason)

    one_bytes = to_bytes(_series(60, SeriesSpec(rows=32, columns=32, n_slices=1))[0])

    def single() -> pydicom.Dataset:
        """The one-slice object again, as a new instance of a new series (no duplicate UIDs)."""
        ds = pydicom.dcmread(io.BytesIO(one_bytes))
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        return ds

    kinds["empty_file"] = ({"empty.dcm": b""}, "empty_file")
    kinds["junk_named_dcm"] = ({"junk.dcm": np.random.default_rng(1).bytes(4096)}, "not_dicom")
    kinds["text_file"] = ({"readme.txt": b"patient list exported 2026-01-01\n" * 20}, "not_dicom")
    kinds["truncated_dicom"] = ({"cut.dcm": to_bytes(single())[:-700]}, "truncated")

    no_pixels = single()
    del no_pixels.PixelData
    kinds["dicom_without_pixels"] = ({"nopix.dcm": to_bytes(no_pixels)}, "no_pixel_data")

    from pydicom.data import get_testdata_file

    with open(get_testdata_file("reportsi.dcm"), "rb") as f:
        kinds["structured_report"] = ({"report.dcm": f.read()}, "non_image_object")

    series_kind("missing_slice", 61, lambda ds: ds[:5] + ds[6:], "series_geometry")

    def duplicate_position(ds):
        ds[4].ImagePositionPatient = ds[3].ImagePositionPatient
        return ds

    series_kind("duplicate_slice_position", 62, duplicate_position, "series_geometry")

    def gantry_tilt(ds):
        for i, d in enumerate(ds):  # positions shear along y: a tilted acquisition
            x, y, z = (float(v) for v in d.ImagePositionPatient)
            d.ImagePositionPatient = [f"{x:.6f}", f"{y + 2.5 * i:.6f}", f"{z:.6f}"]
        return ds

    series_kind("gantry_tilt", 63, gantry_tilt, "series_geometry")

    def mixed_sizes(ds):
        small = _series(64, SeriesSpec(rows=32, columns=32, n_slices=12))
        for d, s in zip(ds[6:], small[6:], strict=True):  # the second half of the series at another matrix size
            d.Rows, d.Columns, d.PixelData = s.Rows, s.Columns, s.PixelData
        return ds

    series_kind("mixed_sizes", 64, mixed_sizes, SPLIT)

    unsupported = single()
    unsupported.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2 video: no decoder here
    unsupported.PixelData = pydicom.encaps.encapsulate([b"\xff\x0a" + b"\0" * 64])
    kinds["unsupported_transfer_syntax"] = ({"jxl.dcm": to_bytes(unsupported)}, "unsupported_pixel_data")

    undecodable = single()
    undecodable.file_meta.TransferSyntaxUID = JPEG2000Lossless
    undecodable.PixelData = pydicom.encaps.encapsulate([np.random.default_rng(2).bytes(900)])
    kinds["undecodable_pixel_data"] = ({"j2k.dcm": to_bytes(undecodable)}, "invalid_pixel_data")

    huge = single()
    huge.Rows = huge.Columns = 60000  # declares 7.2 GB for one slice
    kinds["declared_size_over_budget_dicom"] = ({"huge.dcm": to_bytes(huge)}, "resource_limit")

    nan = np.zeros((32, 32, 4), np.float32)
    nan[3, 3, 1] = np.nan
    kinds["nifti_with_nan"] = ({"nan.nii.gz": _nifti(nan)}, "invalid_volume")
    kinds["nifti_2d"] = ({"flat.nii.gz": _nifti(np.zeros((32, 32), np.int16))}, "invalid_volume")
    kinds["nifti_5d"] = ({"fived.nii.gz": _nifti(np.zeros((8, 8, 4, 2, 2), np.int16))}, "invalid_volume")
    good_nifti, _ = nifti_case(Phantom.random(65), NIFTI_AFFINE, (32, 32, 8), seed=65)
    kinds["truncated_nifti_gz"] = ({"cut.nii.gz": good_nifti[: len(good_nifti) // 2]}, "truncated")
    kinds["junk_named_nii_gz"] = ({"junk.nii.gz": np.random.default_rng(3).bytes(3000)}, "invalid_volume")
    # A 64 x 64 x 8 image whose gzip stream goes on with 256 MiB of zeros (250 KB stored): the
    # reader must stop at the decompression budget (the test sets 64 MiB), not fill memory.
    stream = io.BytesIO()
    with gzip.GzipFile(fileobj=stream, mode="wb", compresslevel=6, mtime=0) as gz:
        gz.write(_declared_nifti((64, 64, 8), b"\0" * (64 * 64 * 8 * 2)))
        chunk = b"\0" * (16 << 20)
        for _ in range(16):
            gz.write(chunk)
    kinds["gzip_bomb_nifti"] = ({"bomb.nii.gz": stream.getvalue()}, "resource_limit")
    kinds["declared_size_over_budget_nifti"] = (
        {"declared.nii": _declared_nifti((4096, 4096, 1024), b"\0" * 1024)}, "resource_limit")
    kinds["nifti_empty_axis"] = ({"zero.nii": _declared_nifti((32, 0, 8), b"")}, "invalid_volume")

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../escaped.dcm", one_bytes)
    kinds["zip_path_escape"] = ({"escape.zip": buf.getvalue()}, "unsafe_archive_member")
    kinds["zip_not_a_zip"] = ({"export.zip": b"PK\x03\x04" + np.random.default_rng(4).bytes(2000)}, "truncated")
    return kinds


def write_bad(root: str) -> dict[str, str]:
    expected = {}
    for kind, (objects, reason) in bad_objects().items():
        for name, data in objects.items():
            storage.write_bytes(f"{root}/bad/{kind}/{name}", data)
        expected[kind] = reason
    return expected

