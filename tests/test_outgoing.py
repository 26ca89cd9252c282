"""What `unet send` may deliver: the output's own SEG (or RT Structure Set) of the row, nothing
else (unet_core.io.dicom.outgoing). Real SEGs from highdicom over synthetic CT series."""
from __future__ import annotations

import io
import os

import pydicom
import pytest

from unet_core.errors import OutgoingObjectError
from unet_core.io.dicom import outgoing
from unet_core.io.dicom.grouping import group_series
from unet_core.io.dicom.header import scan_header
from unet_core.io.dicom.seg import SegIdentity, build_seg, seg_bytes
from unet_core.io.dicom.series import read_series_with_sources
from unet_core.synthetic import TARGET, Phantom, SeriesSpec, dicom_series

IDENT = SegIdentity("liver-unet", "0123456789abcdef", "0.1.0")


@pytest.fixture(scope="module")
def made():
    """(SEG bytes, what its row expects, one source CT slice's bytes, the volume id)."""
    files, _, truth = dicom_series(Phantom.random(3), SeriesSpec(rows=40, columns=48, n_slices=10, pixel_spacing=(7.0, 6.0), slice_step=9.0), seed=3, noise=False)
    files = [(f"mem://{name}", data) for name, data in files]
    groups, _ = group_series([scan_header(data, uri) for uri, data in files])
    blobs = dict(files)
    volume, sources = read_series_with_sources(groups[0], [blobs[u] for u in groups[0].uris])
    seg = build_seg((truth == TARGET).astype("uint8"), sources, ["background", "organ"], {}, IDENT,
                    volume.volume_id, "fp")
    source = sources.datasets[0]
    expected = outgoing.Expected(str(seg.SOPInstanceUID), str(source.StudyInstanceUID),
                                 str(source.SeriesInstanceUID))
    return seg_bytes(seg), expected, files[0][1], volume.volume_id


def _edited(data: bytes, **values) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for k, v in values.items():
        setattr(ds.file_meta if k.startswith("MediaStorage") else ds, k, v)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def test_the_rows_own_seg_is_deliverable(made):
    data, expected, *_ = made
    ds = outgoing.check_outgoing(data, expected, "s3://b/out/seg/x.dcm")
    assert ds.SOPInstanceUID == expected.sop_instance_uid


def test_the_expected_uid_is_the_one_build_seg_gives(made):
    data, expected, *_ = made
    volume_id = made[3]
    assert outgoing.seg_instance_uid(volume_id, "fp", IDENT.model_identity) == expected.sop_instance_uid
    assert outgoing.seg_instance_uid(volume_id, "fp2", IDENT.model_identity) != expected.sop_instance_uid


def test_another_patients_ct_slice_is_refused_without_naming_the_patient(made):
    _, expected, ct, _ = made
    ct = _edited(ct, PatientName="DOE^JANE", PatientID="MRN123")
    with pytest.raises(OutgoingObjectError, match=r"out/seg/x\.dcm: not sent: its SOP Class is CT Image Storage") \
            as info:
        outgoing.check_outgoing(ct, expected, "out/seg/x.dcm")
    assert "DOE" not in str(info.value) and "MRN123" not in str(info.value)


@pytest.mark.parametrize("change, words", [
    ({"MediaStorageSOPInstanceUID": "1.2.3.4.5"}, "file meta names another"),
    ({"StudyInstanceUID": "1.2.3.4.6"}, "another study"),
])
def test_a_seg_of_another_volume_or_study_is_refused(made, change, words):
    data, expected, *_ = made
    with pytest.raises(OutgoingObjectError, match=words):
        outgoing.check_outgoing(_edited(data, **change), expected, "x.dcm")


def test_a_seg_with_another_uid_or_source_series_is_refused(made):
    data, expected, *_ = made
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with pytest.raises(OutgoingObjectError, match="SOP Instance UID is not"):
        outgoing.check_outgoing(out.getvalue(), expected, "x.dcm")
    other = outgoing.Expected(expected.sop_instance_uid, expected.study_instance_uid, "1.2.3.4.9")
    with pytest.raises(OutgoingObjectError, match="not only the volume's source series 1.2.3.4.9"):
        outgoing.check_outgoing(data, other, "x.dcm")
    with pytest.raises(OutgoingObjectError, match="cannot be read as DICOM"):
        outgoing.check_outgoing(b"not dicom at all", expected, "x.dcm")


def test_a_seg_in_the_rtstruct_folder_is_not_what_that_folder_holds(made, tmp_path):
    data, expected, *_ = made
    out = str(tmp_path / "out")
    with pytest.raises(OutgoingObjectError, match="not one this tool writes there"):
        outgoing.outgoing(out, f"{out}/rtstruct/x.dcm", data, expected)
    assert outgoing.outgoing(out, f"{out}/seg/x.dcm", data, expected).SOPInstanceUID == expected.sop_instance_uid


@pytest.mark.parametrize("file_uri, folder", [
    ("s3://b/out/seg/ab/x.dcm", "seg"),
    ("s3://b/out/rtstruct/x.dcm", "rtstruct"),
    ("s3://b/out/seg/../masks/x.nii.gz", None),
    ("s3://b/out/seg/%2e%2e/masks/x.dcm", None),
    ("s3://b/out/seg/%252e%252e/x.dcm", None),
    ("s3://b/out/seg//x.dcm", None),
    ("s3://b/out/seg/", None),
    ("s3://b/outer/seg/x.dcm", None),
    ("s3://other/out/seg/x.dcm", None),
    ("s3://b/archive/ct/1.dcm", None),
    ("/tmp/out/seg/x.dcm", None),
    ("dicomweb+https://pacs/dicom-web/studies/1.2", None),
])
def test_only_files_under_the_outputs_seg_or_rtstruct_on_s3(file_uri, folder):
    if folder:
        assert outgoing.deliverable_folder("s3://b/out", file_uri) == folder
    else:
        with pytest.raises(OutgoingObjectError, match="not sent"):
            outgoing.deliverable_folder("s3://b/out", file_uri)


def test_only_files_under_the_outputs_seg_or_rtstruct_locally(tmp_path):
    out = tmp_path / "out"
    (out / "seg").mkdir(parents=True)
    (out / "masks").mkdir()
    (out / "seg" / "a.dcm").write_bytes(b"x")
    (out / "masks" / "m.nii.gz").write_bytes(b"x")
    outside = tmp_path / "archive"
    outside.mkdir()
    (outside / "ct.dcm").write_bytes(b"x")
    os.symlink(outside / "ct.dcm", out / "seg" / "link.dcm")  # a link inside seg/ to a file elsewhere
    os.symlink(outside, out / "seg" / "folder")
    assert outgoing.deliverable_folder(str(out), str(out / "seg" / "a.dcm")) == "seg"
    assert outgoing.deliverable_folder(str(out), "file://" + str(out / "seg" / "a.dcm")) == "seg"
    for bad in (str(out / "seg" / ".." / "masks" / "m.nii.gz"), "file://" + str(out / "seg") + "/%2e%2e/masks/m.nii.gz",
                str(out / "seg" / "link.dcm"), str(out / "seg" / "folder" / "ct.dcm"), str(outside / "ct.dcm"),
                "s3://b/out/seg/a.dcm"):
        with pytest.raises(OutgoingObjectError, match="not sent"):
            outgoing.deliverable_folder(str(out), bad)


def test_a_seg_folder_that_is_a_link_is_refused(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "x.dcm").write_bytes(b"x")
    os.symlink(elsewhere, out / "seg")
    with pytest.raises(OutgoingObjectError, match="not sent"):
        outgoing.deliverable_folder(str(out), str(out / "seg" / "x.dcm"))
