"""DICOM reading: series assembly, real files from pydicom's test data, and bad input."""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from support.dicom_factory import PHANTOM, edit, pydicom_test_files, write_series
from unet_core.config import Limits
from unet_core.errors import (
    AmbiguousSourceError,
    EmptyFileError,
    NonImageObjectError,
    NoPixelDataError,
    NotDicomError,
    ResourceLimitError,
    SeriesGeometryError,
    TruncatedFileError,
    UnsupportedPixelDataError,
)
from unet_core.io import read_volume
from unet_core.io.dicom.grouping import group_series
from unet_core.io.dicom.header import scan_header
from unet_core.synthetic import SeriesSpec, grid_world


def test_series_in_shuffled_order_is_sorted_by_position_not_instance_number(tmp_path):
    spec = SeriesSpec(rows=32, columns=32, n_slices=8, descending=True)
    paths, hu, _ = write_series(tmp_path / "s", spec, noise=False)
    # InstanceNumber disagrees with position on purpose: reverse them.
    for p in paths:
        edit(p, lambda ds: setattr(ds, "InstanceNumber", 100 - int(ds.InstanceNumber)))
    vol = read_volume(list(reversed(paths)))
    np.testing.assert_array_equal(vol.voxels, hu)
    expected, _ = PHANTOM.sample(grid_world(vol.affine, vol.shape))
    np.testing.assert_array_equal(vol.voxels, np.round(expected))
    assert vol.volume_id.startswith("dcm-") and vol.modality == "CT"
    assert vol.spacing == pytest.approx((6.0, 6.0, 8.0))
    assert "PatientName" not in vol.metadata and "PHANTOM" not in repr(vol.metadata)


def test_prefix_with_one_series_and_keep_phi(tmp_path):
    write_series(tmp_path / "s")
    assert read_volume(str(tmp_path / "s")).shape == (32, 32, 8)
    assert read_volume(str(tmp_path / "s"), keep_phi=True).metadata["PatientName"] == "PHANTOM^SYNTHETIC"


def test_rescale_slope_and_intercept_per_slice(tmp_path):
    paths, hu, _ = write_series(tmp_path / "s", noise=False)

    def halve(ds):
        arr = ds.pixel_array.astype(np.int32)
        ds.PixelData = (arr // 2).astype(np.uint16).tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = "2", "-1024"

    edit(paths[3], halve)
    vol = read_volume(paths)
    k = int(np.argsort([float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in paths])[3])
    np.testing.assert_allclose(vol.voxels[:, :, k], (np.floor((hu[:, :, k] + 1024) / 2) * 2 - 1024))
    np.testing.assert_array_equal(np.delete(vol.voxels, k, axis=2), np.delete(hu, k, axis=2))


def test_prefix_with_two_series_lists_them(tmp_path):
    write_series(tmp_path / "both" / "a")
    write_series(tmp_path / "both" / "b")
    with pytest.raises(AmbiguousSourceError, match=r"holds 2 series: .* \(8 slices\), .* \(8 slices\)"):
        read_volume(str(tmp_path / "both"))


def test_localizer_is_split_from_its_series(tmp_path):
    paths, _, _ = write_series(tmp_path / "s")
    scout, _, _ = write_series(tmp_path / "scout", SeriesSpec(orientation="coronal", rows=32, columns=32, n_slices=1))
    uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
    edit(scout[0], lambda ds: setattr(ds, "SeriesInstanceUID", uid))
    headers = [scan_header(open(p, "rb").read(), p) for p in paths + scout]
    groups, aside = group_series(headers)
    assert sorted(g.n_slices for g in groups) == [1, 8] and not aside
    assert len({g.volume_id for g in groups}) == 2
    with pytest.raises(SeriesGeometryError, match="mixes image sizes or orientations"):
        read_volume(paths + scout)


def test_duplicate_instances_keep_the_largest_copy(tmp_path):
    paths, hu, _ = write_series(tmp_path / "s", noise=False)
    data = open(paths[2], "rb").read()
    (tmp_path / "s" / "copy_cut.dcm").write_bytes(data[:-500])
    headers = [scan_header(open(p, "rb").read(), p) for p in sorted(map(str, (tmp_path / "s").iterdir()))]
    groups, aside = group_series(headers)
    assert len(groups) == 1 and groups[0].n_slices == 8
    assert [h.uri.endswith("copy_cut.dcm") for h in aside] == [True]
    assert aside[0].error_type == "duplicate_instance" and "IM00003.dcm" in aside[0].reason
    np.testing.assert_array_equal(read_volume(str(tmp_path / "s")).voxels, hu)


def test_mixed_sizes(tmp_path):
    paths, _, _ = write_series(tmp_path / "s")
    other, _, _ = write_series(tmp_path / "o", SeriesSpec(rows=16, columns=16, n_slices=2))
    uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
    for p in other:
        edit(p, lambda ds: setattr(ds, "SeriesInstanceUID", uid))
    with pytest.raises(SeriesGeometryError, match=r"mixes image sizes or orientations: 32x32 .*16x16"):
        read_volume(paths + other)


def test_missing_slice(tmp_path):
    paths, _, _ = write_series(tmp_path / "s")
    with pytest.raises(SeriesGeometryError, match=r"missing slice\(s\): gap of 16.000 mm .* step is 8.000 mm"):
        read_volume(paths[:4] + paths[5:])


def test_duplicate_positions(tmp_path):
    paths, _, _ = write_series(tmp_path / "s")
    shutil.copy(paths[2], tmp_path / "s" / "copy.dcm")
    edit(str(tmp_path / "s" / "copy.dcm"), lambda ds: setattr(ds, "SOPInstanceUID", pydicom.uid.generate_uid()))
    with pytest.raises(SeriesGeometryError, match=r"1 duplicate slice position\(s\)"):
        read_volume(str(tmp_path / "s"))


def test_gantry_tilt_is_refused_with_the_angle(tmp_path):
    paths, _, _ = write_series(tmp_path / "s")

    def tilt(ds):
        z = float(ds.ImagePositionPatient[2])
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], f"{float(ds.ImagePositionPatient[1]) + 0.2 * z:.4f}", f"{z:.4f}"]

    for p in paths:
        edit(p, tilt)
    with pytest.raises(SeriesGeometryError, match=r"gantry tilt of 11\.\d\d degrees"):
        read_volume(paths)


def test_header_scan_from_a_prefix(tmp_path):
    paths, _, _ = write_series(tmp_path / "s")
    data = open(paths[0], "rb").read()
    full = scan_header(data, paths[0])
    partial = scan_header(data[:4096], paths[0], size=len(data))
    assert full.kind == partial.kind == "image" and full == partial
    assert scan_header(data[:200], paths[0], size=len(data)) is None  # ask for more bytes


# ---- real files from pydicom's test data -----------------------------------------------------
def test_enhanced_multiframe_ct():
    path = get_testdata_file("eCT_Supplemental.dcm")
    vol = read_volume([path])
    assert vol.shape == (512, 512, 2) and vol.modality == "CT"
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array.astype(np.float32)
    item = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    hu = raw * float(item.RescaleSlope) + float(item.RescaleIntercept)
    iop = np.array(ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])  # (0, 0, -1): this file's slices run towards the feet
    along = [np.array(f.PlanePositionSequence[0].ImagePositionPatient, float) @ normal
             for f in ds.PerFrameFunctionalGroupsSequence]
    assert along[1] < along[0]
    for k, frame in enumerate(np.argsort(along)):
        np.testing.assert_array_equal(vol.voxels[:, :, k], hu[frame].T)


@pytest.mark.parametrize(
    "compressed",
    ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm",
     "MR_small_implicit.dcm"],
)
def test_compressed_transfer_syntaxes_decode_to_the_uncompressed_values(compressed):
    ref = read_volume([get_testdata_file("MR_small.dcm")])
    vol = read_volume([get_testdata_file(compressed)])
    np.testing.assert_array_equal(vol.voxels, ref.voxels)
    np.testing.assert_allclose(vol.affine, ref.affine)


def test_real_ct_slice_geometry():
    path = get_testdata_file("CT_small.dcm")
    vol = read_volume([path])
    ds = pydicom.dcmread(path)
    # Voxel (0, 0, 0) sits at ImagePositionPatient, in RAS.
    lps = np.array([float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(vol.affine[:3, 3], lps * [-1, -1, 1])
    np.testing.assert_array_equal(vol.voxels[:, :, 0], ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept))


# ---- bad input --------------------------------------------------------------------------------
def test_empty_file(tmp_path):
    (tmp_path / "e.dcm").write_bytes(b"")
    with pytest.raises(EmptyFileError, match=r"e\.dcm: empty file"):
        read_volume([str(tmp_path / "e.dcm")])


def test_junk_bytes(tmp_path):
    (tmp_path / "junk.dcm").write_bytes(os.urandom(3000))
    with pytest.raises(NotDicomError, match=r"junk\.dcm: not a DICOM file"):
        read_volume([str(tmp_path / "junk.dcm")])


def test_truncated_dicom(tmp_path):
    paths, _, _ = write_series(tmp_path / "s")
    data = open(paths[0], "rb").read()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 700])
    with pytest.raises(TruncatedFileError, match=r"cut\.dcm: .*truncated"):
        read_volume([str(tmp_path / "cut.dcm")])
    (tmp_path / "cut2.dcm").write_bytes(data[:300])
    with pytest.raises(TruncatedFileError, match=r"cut2\.dcm"):
        read_volume([str(tmp_path / "cut2.dcm")])


def test_pydicom_truncated_mr():
    with pytest.raises(TruncatedFileError, match="MR_truncated.dcm"):
        read_volume([get_testdata_file("MR_truncated.dcm")])


def test_no_pixel_data(tmp_path):
    paths, _, _ = write_series(tmp_path / "s")
    edit(paths[0], lambda ds: delattr(ds, "PixelData"))
    with pytest.raises(NoPixelDataError, match=r"IM00001\.dcm: CT Image Storage without pixel data"):
        read_volume([paths[0]])


@pytest.mark.parametrize(
    "name, what",
    [("reportsi.dcm", "Basic Text SR Storage"), ("liver.dcm", "Segmentation Storage"),
     ("rtplan.dcm", "RT Plan Storage"), ("rtstruct.dcm", "RT Structure Set Storage")],
)
def test_non_image_objects(name, what):
    with pytest.raises(NonImageObjectError, match=rf"{name}: {what} \(.*\) is not an image to segment"):
        read_volume([get_testdata_file(name)])


def test_per_volume_budget(tmp_path):
    paths, _, _ = write_series(tmp_path / "s")
    with pytest.raises(ResourceLimitError, match=r"8 slices of 32x32 need 32768 bytes, above the per-volume budget"):
        read_volume(paths, limits=Limits(max_volume_bytes=32767))


def test_compressed_without_decoder_names_syntax_and_extra(tmp_path):
    """A real run with the codecs uninstalled for that interpreter: their imports are blocked
    (jpeg_ls is pyjpegls, which highdicom brings)."""
    code = (
        "import sys\n"
        "for m in ('pylibjpeg','openjpeg','libjpeg','rle','gdcm','pylibjpeg_rle','jpeg_ls'): sys.modules[m] = None\n"
        "from pydicom.data import get_testdata_file\n"
        "from unet_core.io import read_volume\n"
        "from unet_core.errors import UnsupportedPixelDataError\n"
        "try:\n"
        "    read_volume([get_testdata_file('MR_small_jpeg_ls_lossless.dcm')])\n"
        "except UnsupportedPixelDataError as e:\n"
        "    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ERR" in out.stdout, out.stderr[-2000:]
    assert "JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)" in out.stdout
    assert "pip install 'unet-ray[codecs]'" in out.stdout


def test_undecodable_syntax_even_with_codecs(tmp_path):
    paths, _, _ = write_series(tmp_path / "s")

    def mpeg(ds):
        ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG4HP41
        ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])

    edit(paths[0], mpeg)
    with pytest.raises(UnsupportedPixelDataError, match=r"MPEG-4 .* no decoder for it is installed"):
        read_volume([paths[0]])


@pytest.mark.parametrize("bits, stored, signed, syntax", [
    (16, 12, 0, "ExplicitVRLittleEndian"), (16, 12, 1, "ExplicitVRLittleEndian"), (16, 16, 1, "ImplicitVRLittleEndian"),
    (8, 8, 0, "ExplicitVRLittleEndian"), (8, 7, 1, "ExplicitVRLittleEndian"), (32, 20, 1, "ExplicitVRLittleEndian"),
    (16, 12, 1, "DeflatedExplicitVRLittleEndian"),
])
def test_uncompressed_pixels_read_from_the_buffer_equal_pydicom(tmp_path, bits, stored, signed, syntax):
    """The buffer path masks unused high bits and sign-extends exactly as pydicom's pixel_array.
    (Big endian takes pydicom's path: MR_small_bigendian.dcm above.)"""
    from unet_core.io.dicom.pixels import decode_frames
    from unet_core.synthetic import to_bytes

    paths, _, _ = write_series(tmp_path / "s", SeriesSpec(rows=16, columns=12, n_slices=2))
    ds = pydicom.dcmread(paths[0])
    rng = np.random.default_rng(bits + stored)
    values = rng.integers(0, 2**bits, size=16 * 12, dtype=np.uint64)  # high bits set at random
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, signed
    ds.PixelData = values.astype(f"<u{bits // 8}").tobytes()
    ds.file_meta.TransferSyntaxUID = getattr(pydicom.uid, syntax)
    data = to_bytes(ds)
    _, pixels = decode_frames(data, "mem://x")
    expected = pydicom.dcmread(io.BytesIO(data)).pixel_array
    assert pixels.shape == (1, 16, 12)
    np.testing.assert_array_equal(pixels[0], expected)



def _all_test_files() -> list[str]:
    return [str(p) for p in pydicom_test_files()
            if not p.name.endswith((".txt", ".json", ".gz", ".bz2", ".zip", ".md"))]


def test_fast_header_scan_equals_pydicoms_on_every_test_file(monkeypatch):
    """The struct-based scan (explicit VR little endian) gives the same header as the pydicom path,
    from 64 KiB prefixes and whole files, for every file of pydicom's test data it takes."""
    import unet_core.io.dicom.header as header_mod
    from unet_core.io.dicom.fastscan import fast_scan
    from unet_core.io.dicom.parse import HEADER_PREFIX_BYTES

    files = _all_test_files()
    assert len(files) > 100
    taken = 0
    for path in files:
        data = open(path, "rb").read()
        for chunk in (data[:HEADER_PREFIX_BYTES], data):
            fast = scan_header(chunk, path, len(data))
            with monkeypatch.context() as m:
                m.setattr(header_mod, "fast_scan", lambda _: None)
                slow = scan_header(chunk, path, len(data))
            assert fast == slow, path
        taken += fast_scan(data) is not None
    assert taken > 30  # the fast path is really taken


def test_fast_header_scan_gives_up_on_malformed_bytes():
    from unet_core.io.dicom.fastscan import fast_scan

    paths = [p for p in _all_test_files() if fast_scan(open(p, "rb").read()) is not None][:5]
    rng = np.random.default_rng(0)
    for path in paths:
        data = bytearray(open(path, "rb").read())
        for _ in range(200):
            cut = bytes(data[:int(rng.integers(132, min(len(data), 4096)))])
            fast_scan(cut)  # never raises
            mangled = bytearray(data[:4096])
            mangled[int(rng.integers(132, len(mangled)))] = int(rng.integers(0, 256))
            result = fast_scan(bytes(mangled))
            assert result is None or isinstance(result[1], int)


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless", "JPEGLSLossless", None])
def test_slices_after_the_first_decode_without_pydicoms_parse_and_equal_it(tmp_path, monkeypatch, syntax):
    """Classic slices after the first take the fast path (buffer, or the codec once on the
    encapsulated fragments); the volume equals the one decoded through pydicom, slice by slice."""
    import unet_core.io.dicom.series as series_mod
    from unet_core.io.dicom.series import read_series
    from unet_core.synthetic import to_bytes

    paths, _, _ = write_series(tmp_path / "s", SeriesSpec(rows=64, columns=48, n_slices=5))
    blobs = {}
    for p in paths:
        ds = pydicom.dcmread(p)
        if syntax:
            ds.compress(getattr(pydicom.uid, syntax))
        blobs[p] = to_bytes(ds)
    (group,), _ = group_series([scan_header(b, u) for u, b in blobs.items()])
    calls = []
    real = series_mod.decode_frames
    monkeypatch.setattr(series_mod, "decode_frames", lambda data, uri, *a: calls.append(uri) or real(data, uri, *a))
    fast = read_series(group, [blobs[u] for u in group.uris])
    assert len(calls) == 1  # only the first slice went through pydicom
    monkeypatch.setattr(series_mod, "fast_plane", lambda blob, header: None)
    slow = read_series(group, [blobs[u] for u in group.uris])
    np.testing.assert_array_equal(fast.voxels, slow.voxels)
    np.testing.assert_array_equal(fast.affine, slow.affine)
    assert fast.voxels.dtype == np.float32 and fast.shape == (48, 64, 5)


def _mr_series(path: str, n: int = 4) -> dict[str, bytes]:
    """A real MR slice from pydicom's test data made into an n-slice series (positions stepped
    along the normal, new instance UIDs); saved in the file's own encoding."""
    out = {}
    for k in range(n):
        ds = pydicom.dcmread(path)
        iop = np.array(ds.ImageOrientationPatient, float)
        normal = np.cross(iop[:3], iop[3:])
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.array(ds.ImagePositionPatient, float) + 5.0 * k * normal]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{k + 1}"
        ds.InstanceNumber = k + 1
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out[f"mem://{k}.dcm"] = buf.getvalue()
    return out


@pytest.mark.parametrize("syntax", ["ImplicitVRLittleEndian", "ExplicitVRLittleEndian", "ExplicitVRBigEndian",
                                    "DeflatedExplicitVRLittleEndian"])
def test_every_natively_decoded_syntax_scans_from_a_prefix_and_decodes(syntax):
    """A real series in each transfer syntax pydicom decodes without plugins: the header scan of
    a 64 KiB prefix (or of the whole object when the prefix cannot tell) finds an image, and the
    volume equals the explicit VR little endian one. (A deflated header was once reported as
    "without pixel data": the scan looked for the pixel tag at an offset of the inflated stream.)"""
    from unet_core.io.dicom.parse import HEADER_PREFIX_BYTES
    from unet_core.io.dicom.series import read_series

    reference = _mr_series(get_testdata_file("MR_small.dcm"))
    if syntax == "ExplicitVRBigEndian":
        blobs = _mr_series(get_testdata_file("MR_small_bigendian.dcm"))
    else:
        blobs = {}
        for uri, data in reference.items():
            ds = pydicom.dcmread(io.BytesIO(data))
            ds.file_meta.TransferSyntaxUID = getattr(pydicom.uid, syntax)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            blobs[uri] = buf.getvalue()
    assert all(pydicom.dcmread(io.BytesIO(b)).file_meta.TransferSyntaxUID == getattr(pydicom.uid, syntax)
               for b in blobs.values())
    headers = []
    for uri, data in blobs.items():
        h = scan_header(data[:HEADER_PREFIX_BYTES], uri, len(data)) or scan_header(data, uri)
        assert h.kind == "image", h.reason
        headers.append(h)
    (group,), aside = group_series(headers)
    assert not aside
    vol = read_series(group, [blobs[u] for u in group.uris])
    (ref_group,), _ = group_series([scan_header(d, u) for u, d in reference.items()])
    ref = read_series(ref_group, [reference[u] for u in ref_group.uris])
    assert vol.shape == (64, 64, 4)
    np.testing.assert_array_equal(vol.voxels, ref.voxels)
    np.testing.assert_allclose(vol.affine, ref.affine)


@pytest.mark.parametrize("slope, what", [("1e38", "non-finite"), ("1e6", "out-of-range")])
def test_absurd_rescale_is_an_invalid_volume_with_counts(tmp_path, slope, what):
    from unet_core.errors import InvalidVolumeError

    paths, _, _ = write_series(tmp_path / "s", SeriesSpec(rows=16, columns=16, n_slices=3))
    edit(paths[1], lambda ds: setattr(ds, "RescaleSlope", slope))
    with pytest.raises(InvalidVolumeError, match=rf"series .* has \d+ non-finite and \d+ out-of-range .*{re.escape(f'{float(slope):g}')}") as e:
        read_volume(paths)
    assert str(e.value).startswith(paths[1])  # the object with the bad slope
    assert e.value.reason == "invalid_volume"
    counts = [int(x) for x in re.findall(r"has (\d+) non-finite and (\d+) out-of-range", str(e.value))[0]]
    assert counts[0 if what == "non-finite" else 1] > 0


def test_dicomdir_is_a_skipped_non_image_object():
    path = get_testdata_file("DICOMDIR")
    data = open(path, "rb").read()
    h = scan_header(data, path)
    assert (h.kind, h.error_type) == ("non_image", "non_image_object")
    assert "DICOMDIR" in h.reason


@pytest.mark.parametrize("syntax", ["ExplicitVRLittleEndian", "ImplicitVRLittleEndian"])
def test_a_cut_object_is_found_truncated_from_its_header(tmp_path, syntax):
    """The scan compares the pixel data element's declared length with the object's size, so a
    cut slice is an error before any pixel is fetched (even from a 64 KiB prefix of it)."""
    from unet_core.io.dicom.parse import HEADER_PREFIX_BYTES

    paths, _, _ = write_series(tmp_path / "s", SeriesSpec(rows=256, columns=256, n_slices=1))
    edit(paths[0], lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", getattr(pydicom.uid, syntax)))
    data = open(paths[0], "rb").read()
    cut = data[:-900]
    h = scan_header(cut[:HEADER_PREFIX_BYTES], paths[0], len(cut))
    assert h.missing_bytes == 900
    groups, (aside,) = group_series([h])
    assert not groups and (aside.kind, aside.error_type) == ("error", "truncated")
    assert "900 of its declared bytes are missing" in aside.reason
    assert scan_header(data[:HEADER_PREFIX_BYTES], paths[0], len(data)).missing_bytes == 0


@pytest.mark.parametrize("syntax", ["JPEG2000Lossless", "JPEGLSLossless", "RLELossless"])
def test_a_frame_that_declares_another_size_is_never_decoded(tmp_path, syntax):
    """A compressed frame whose own codestream header (J2K SIZ, JPEG-LS SOF55, RLE segments)
    disagrees with Rows / Columns / samples / bits is an invalid_pixel_data error before any codec
    runs: a small frame declaring a huge image cannot allocate it."""
    import tracemalloc

    from unet_core.errors import InvalidPixelDataError
    from unet_core.io.dicom.pixels import decode_frames
    from unet_core.synthetic import to_bytes

    paths, _, _ = write_series(tmp_path / "s", SeriesSpec(rows=512, columns=512, n_slices=1), noise=False)
    ds = pydicom.dcmread(paths[0])
    ds.compress(getattr(pydicom.uid, syntax))
    if syntax == "RLELossless":
        ds.BitsAllocated = ds.BitsStored = 8  # two segments where one is wanted
        ds.HighBit = 7
    else:
        ds.Rows = ds.Columns = 16  # the frame declares 512 x 512
    data = to_bytes(ds)
    tracemalloc.start()
    with pytest.raises(InvalidPixelDataError, match="not decoded|segments"):
        decode_frames(data, "declared.dcm")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 * len(data) + 2**20  # nothing of the declared image's size was allocated
    assert scan_header(data, "declared.dcm").kind == "image"  # the header alone is fine: decode finds it
