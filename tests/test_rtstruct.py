"""RT Structure Sets (unet_core/io/dicom/rtstruct.py, contours.py) without external programs:
contours along voxel edges give every plane back exactly when read by XOR or by union (this
suite's own even-odd rasteriser, tests/support/contour_raster.py), on every geometry a SEG
handles; what the object references and copies. The external readers (dciodvfy, plastimatch,
dcmrtstruct2nii, Orthanc) are in tests/test_rtstruct_readers.py (e2e)."""
from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pydicom
import pytest

from support.contour_raster import polygon_inside, read_back
from support.rt_cases import CASES, ENHANCED, NAMES, hard_labels, hard_plane, read_files, series_files
from support.rtstruct_check import roi_masks
from unet_core.io import read_objects
from unet_core.io.dicom.contours import plane_polygons
from unet_core.io.dicom.rtstruct import (
    RT_STRUCTURE_SET_STORAGE,
    RtstructSkipped,
    build_rtstruct,
    ds_text,
    rtstruct_bytes,
)
from unet_core.io.dicom.seg import SegIdentity, build_seg
from unet_core.synthetic import Phantom, SeriesSpec, dicom_series, to_bytes

IDENT = SegIdentity("organs-unet", "0123456789abcdef", "0.1.0")


def _check_plane(plane: np.ndarray) -> list[np.ndarray]:
    polygons = plane_polygons(plane)
    for combine in ("xor", "or", "nonzero"):
        np.testing.assert_array_equal(read_back(polygons, plane.shape, combine), plane, err_msg=combine)
    for p in polygons:
        assert len(p) >= 4
        assert np.all((p + 0.5) == np.round(p + 0.5)), "a vertex off the voxel corners"
        step_in, step_out = np.sign(p - np.roll(p, 1, 0)), np.sign(np.roll(p, -1, 0) - p)
        assert not np.any(np.all(step_in == step_out, axis=1)), "a collinear vertex kept"
        assert np.all((step_in == 0).sum(axis=1) == 1), "an edge off the grid lines"
        x, y = p[:, 0], p[:, 1]
        assert (x * np.roll(y, -1) - np.roll(x, -1) * y).sum() > 0, "a polygon turning clockwise"
    return polygons


@pytest.mark.parametrize("rows", [
    ["1"],  # one voxel
    ["10", "01"],  # touching at a corner only: two polygons
    ["1010", "0101", "1010", "0101"],  # a checkerboard
    ["111", "101", "111"],  # a one-voxel hole
    ["0111", "1011", "1111"],  # a hole touching the outside at a corner
    ["11111", "10001", "10101", "10001", "11111"],  # an island inside a hole
    ["1111111", "1000001", "1011101", "1010101", "1011101", "1000001", "1111111"],  # a hole in the island
    ["111", "110", "101"],  # a notch reaching the outside diagonally
    ["11111", "10101", "11111"],  # two holes side by side
    ["0110", "1001", "1001", "0110"],  # a ring of diagonal steps: its inside touches the outside at 4 corners
])
def test_contours_give_back_hard_planes(rows):
    plane = np.array([[c == "1" for c in r] for r in rows]).T
    _check_plane(plane)
    _check_plane(np.pad(plane, 3))


def test_touching_at_a_corner_makes_separate_polygons_and_holes_join_their_outline():
    assert len(_check_plane(np.array([[1, 0], [0, 1]], bool))) == 2
    assert len(_check_plane(np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], bool))) == 1  # keyhole: one polygon
    ring_with_island = np.pad(np.ones((5, 5), bool), 1)
    ring_with_island[2:5, 2:5] = False
    ring_with_island[3, 3] = True
    assert len(_check_plane(ring_with_island)) == 2  # the island is its own polygon


def test_contours_give_back_random_planes():
    rng = np.random.default_rng(33)
    for _ in range(150):
        shape = tuple(int(n) for n in rng.integers(1, 16, 2))
        _check_plane(rng.random(shape) < rng.uniform(0.05, 0.95))


def test_contours_give_back_a_full_plane_and_nothing_for_an_empty_one():
    assert plane_polygons(np.zeros((5, 4), bool)) == []
    [square] = _check_plane(np.ones((5, 4), bool))
    assert sorted(map(tuple, square.tolist())) == [(-0.5, -0.5), (-0.5, 3.5), (4.5, -0.5), (4.5, 3.5)]


def test_the_rasteriser_of_these_tests_can_fail():
    square = np.array([[-0.5, -0.5], [1.5, -0.5], [1.5, 1.5], [-0.5, 1.5]])
    assert polygon_inside(square, (3, 3)).sum() == 4
    with pytest.raises(AssertionError, match="on a contour"):
        polygon_inside(square + 0.5, (3, 3))  # through voxel centres: ambiguous
    nested = [square * 2 + 0.5, square + 0.5 + 0.5]
    assert read_back(nested, (5, 5), "or").sum() > read_back(nested, (5, 5), "xor").sum()
    assert read_back(nested, (5, 5), "nonzero").sum() == read_back(nested, (5, 5), "or").sum()  # same turning sense
    assert read_back([nested[0], nested[1][::-1]], (5, 5), "nonzero").sum() == read_back(nested, (5, 5), "xor").sum()


def _build(labels, sources, names=NAMES, codes=None, volume_id="vol", fingerprint="fp", repaired=None):
    return build_rtstruct(labels, sources, names, codes or {}, IDENT, volume_id, fingerprint, repaired)


@pytest.mark.parametrize("name", CASES)
def test_rtstruct_gives_back_the_labels_on_every_geometry(name):
    [(volume, sources)] = read_files([(f"mem://{n}", d) for n, d in series_files(name)])
    labels = hard_labels(volume.shape)
    rt = _build(labels, sources)
    ds = pydicom.dcmread(io.BytesIO(rtstruct_bytes(rt.dataset)))
    assert rt.absent_labels == ("absent",)
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["organ", "body", "specks"]
    for combine in ("xor", "or", "nonzero"):
        masks = roi_masks(ds, volume.affine, volume.shape, combine)
        for k, roi in enumerate(NAMES[1:4], start=1):
            np.testing.assert_array_equal(masks[roi], labels == k, err_msg=f"{roi} read by {combine}")
    _check_references(ds, sources, labels)


def _check_references(ds: pydicom.Dataset, sources, labels) -> None:
    """Every contour references the source image (and frame) of its slice; the referenced frame
    of reference lists every image of the volume; ROI numbers agree across the three sequences."""
    refs = []
    for d, f in sources.frames:
        src = sources.datasets[d]
        multi = int(src.get("NumberOfFrames", 1) or 1) > 1
        refs.append((str(src.SOPInstanceUID), f + 1 if multi else None))
    [frame_of_reference] = ds.ReferencedFrameOfReferenceSequence
    assert frame_of_reference.FrameOfReferenceUID == sources.datasets[0].FrameOfReferenceUID
    [study] = frame_of_reference.RTReferencedStudySequence
    assert study.ReferencedSOPInstanceUID == sources.datasets[0].StudyInstanceUID
    [series] = study.RTReferencedSeriesSequence
    assert series.SeriesInstanceUID == sources.datasets[0].SeriesInstanceUID
    listed = [(i.ReferencedSOPInstanceUID, i.get("ReferencedFrameNumber")) for i in series.ContourImageSequence]
    assert listed == refs
    numbers = [int(r.ROINumber) for r in ds.StructureSetROISequence]
    assert [int(r.ReferencedROINumber) for r in ds.ROIContourSequence] == numbers
    assert [int(r.ReferencedROINumber) for r in ds.RTROIObservationsSequence] == numbers
    for roi in ds.ROIContourSequence:
        slices_with_contours = set()
        for contour in roi.ContourSequence:
            [image] = contour.ContourImageSequence
            point = np.asarray([float(v) for v in contour.ContourData[:3]])
            # which slice: the one whose plane holds the point (distance along its normal)
            k = _slice_of(point, sources)
            assert (image.ReferencedSOPInstanceUID, image.get("ReferencedFrameNumber")) == refs[k]
            slices_with_contours.add(k)
        expected = set(np.flatnonzero((labels == int(roi.ReferencedROINumber)).any(axis=(0, 1))).tolist())
        assert slices_with_contours == expected


def _slice_of(point_lps: np.ndarray, sources) -> int:
    from unet_core.io.dicom.header import geometry_fields

    distances = []
    for d, f in sources.frames:
        orientation, position, _, _ = geometry_fields(sources.datasets[d], "test", f)
        o = np.asarray(orientation, float)
        normal = np.cross(o[:3], o[3:])
        distances.append(abs(float((point_lps - np.asarray(position, float)) @ normal)))
    k = int(np.argmin(distances))
    assert distances[k] < 1e-3
    return k


def test_enhanced_multiframe_contours_reference_their_frame():
    [(volume, sources)] = read_files([("mem://e.dcm", series_files(ENHANCED)[0][1])])
    assert sources.frames == [(0, 1), (0, 0)]  # grid slice 0 is the source's second frame
    labels = np.zeros(volume.shape, np.uint8)
    labels[:, :, 0] = hard_plane(volume.shape[0], volume.shape[1], 1, 0)
    ds = _build(labels, sources).dataset
    frames = {int(c.ContourImageSequence[0].ReferencedFrameNumber) for r in ds.ROIContourSequence
              for c in r.ContourSequence}
    assert frames == {2}


def test_a_label_without_voxels_gets_no_roi_and_is_named():
    [(volume, sources)] = read_files([(f"mem://{n}", d) for n, d in series_files("axial")])
    labels = hard_labels(volume.shape)
    labels[labels == 1] = 0
    rt = _build(labels, sources)
    assert rt.absent_labels == ("organ", "absent")
    assert [int(r.ROINumber) for r in rt.dataset.StructureSetROISequence] == [2, 3]  # ROI number = label value
    assert rt.note() == "written; no voxels, so no ROI: organ, absent"
    with pytest.raises(RtstructSkipped, match="no foreground voxels"):
        _build(np.zeros(volume.shape, np.uint8), sources)
    with pytest.raises(ValueError, match="label value 7 has no name"):
        _build(np.full(volume.shape, 7, np.uint8), sources)


def test_a_mask_of_noise_gets_no_rtstruct_and_says_why():
    [(volume, sources)] = read_files([(f"mem://{n}", d) for n, d in series_files("axial")])
    labels = (np.indices(volume.shape).sum(axis=0) % 2).astype(np.uint8)  # a 3D checkerboard: 1 voxel, 1 contour
    with pytest.raises(RtstructSkipped, match=r"more than 1,000 contours \(over 1,\d+ by slice 2 of 6\)"):
        build_rtstruct(labels, sources, NAMES, {}, IDENT, "v", "fp", max_contours=1000)


def test_no_rtstruct_without_source_images_or_one_frame_of_reference():
    [(volume, sources)] = read_files([(f"mem://{n}", d) for n, d in series_files("axial")])
    labels = hard_labels(volume.shape)
    with pytest.raises(RtstructSkipped, match="NIfTI input has no DICOM source images"):
        _build(labels, None)
    sources.datasets[2].FrameOfReferenceUID = "1.2.3.4"
    with pytest.raises(RtstructSkipped, match="do not share one Frame of Reference UID.*found 2"):
        _build(labels, sources)
    for ds in sources.datasets:
        del ds.FrameOfReferenceUID
    with pytest.raises(RtstructSkipped, match="found 0"):
        _build(labels, sources)


def test_ds_values_fit_16_characters_with_a_tenth_of_a_micrometre():
    assert ds_text(np.array([12.5, -3.0, -0.00001, 1234567.123456, 0.1 + 0.2])) == "12.5\\-3\\0\\1234567.1235\\0.3"
    assert max(len(v) for v in ds_text(np.array([-9999999999.99994, 123.45678])).split("\\")) <= 16
    with pytest.raises(ValueError, match="finite"):
        ds_text(np.array([np.nan]))
    [(volume, sources)] = read_files([(f"mem://{n}", d) for n, d in series_files("far off centre")])
    ds = pydicom.dcmread(io.BytesIO(rtstruct_bytes(_build(hard_labels(volume.shape), sources).dataset)))
    values = [v for r in ds.ROIContourSequence for c in r.ContourSequence for v in c["ContourData"].value]
    assert values and max(len(str(v)) for v in values) <= 16
    assert any(len(str(v).partition(".")[2]) == 4 for v in values)  # rounded: 0.976563 mm voxels need more


def test_patient_and_study_copied_new_series_deterministic_uids_apart_from_the_seg():
    files = series_files("axial", patient_name="DOE^JANE", patient_id="MRN123")
    [(volume, sources)] = read_files([(f"mem://{n}", d) for n, d in files])
    labels = hard_labels(volume.shape)
    one, again, other = (_build(labels, sources, fingerprint=f).dataset for f in ("fp", "fp", "fp2"))
    assert (one.PatientName, one.PatientID) == ("DOE^JANE", "MRN123")
    assert one.StudyInstanceUID == sources.datasets[0].StudyInstanceUID
    assert one.SeriesInstanceUID != sources.datasets[0].SeriesInstanceUID
    assert (one.SOPInstanceUID, one.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert one.SOPInstanceUID != other.SOPInstanceUID
    seg = build_seg((labels == 1).astype(np.uint8), sources, ["background", "organ"], {}, IDENT, "vol", "fp")
    assert one.SOPInstanceUID != seg.SOPInstanceUID and one.SeriesInstanceUID != seg.SeriesInstanceUID
    assert (one.SOPClassUID, one.Modality, one.file_meta.TransferSyntaxUID) == (
        RT_STRUCTURE_SET_STORAGE, "RTSTRUCT", pydicom.uid.ExplicitVRLittleEndian)
    assert one.FrameOfReferenceUID == sources.datasets[0].FrameOfReferenceUID
    assert len({tuple(r.ROIDisplayColor) for r in one.ROIContourSequence}) == 3
    assert {r.ROIGenerationAlgorithm for r in one.StructureSetROISequence} == {"AUTOMATIC"}


def test_invalid_patient_and_study_values_are_left_out_by_keyword():
    edited = []
    for name, data in series_files("axial"):
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.PatientBirthDate = "31/12/1960"
        ds.StudyTime = "25:61"
        ds.StudyDescription = "WHOLE BODY " * 10
        ds.PositionReferenceIndicator = "X" * 80  # LO holds 64
        ds.PatientIdentityRemoved = "yes please"  # CS: upper case, digits, space, underscore; 16 at most
        ds.DeidentificationMethod = "BASIC PROFILE"
        edited.append((f"mem://{name}", to_bytes(ds)))
    [(volume, sources)] = read_files(edited)
    rt = _build(hard_labels(volume.shape), sources)
    data = rtstruct_bytes(rt.dataset)
    assert rt.repaired == ("PatientBirthDate", "PatientIdentityRemoved", "PositionReferenceIndicator",
                           "StudyDescription", "StudyTime")
    assert b"31/12/1960" not in data and b"25:61" not in data and b"WHOLE BODY" not in data and b"XXXX" not in data
    assert "PositionReferenceIndicator" in rt.note() and "no ROI: absent" in rt.note()
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.PatientBirthDate == "" and ds.StudyTime == "" and "StudyDescription" not in ds
    assert "PatientIdentityRemoved" not in ds and ds.DeidentificationMethod == "BASIC PROFILE"
    assert sources.datasets[0].PatientBirthDate == "31/12/1960"  # the source is untouched


def test_a_patient_name_in_another_character_set_is_kept():
    edited = []
    for name, data in series_files("axial"):
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = "MÜLLER^JÖRG"
        edited.append((f"mem://{name}", to_bytes(ds)))
    assert "MÜLLER".encode("latin-1") in edited[0][1]
    [(volume, sources)] = read_files(edited)
    data = rtstruct_bytes(_build(hard_labels(volume.shape), sources).dataset)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert (ds.SpecificCharacterSet, str(ds.PatientName)) == ("ISO_IR 192", "MÜLLER^JÖRG")
    assert "MÜLLER".encode("utf-8") in data


def test_bundle_codes_become_roi_identification_codes_and_names_are_kept():
    [(volume, sources)] = read_files([(f"mem://{n}", d) for n, d in series_files("axial")])
    names = ["background", "Leber", "Körper", "specks", "absent"]
    codes = {"Leber": {"category": {"scheme": "SCT", "value": "123037004", "meaning": "Anatomical Structure"},
                       "type": {"scheme": "SCT", "value": "10200004", "meaning": "Liver"}}}
    ds = pydicom.dcmread(io.BytesIO(rtstruct_bytes(_build(hard_labels(volume.shape), sources, names, codes).dataset)))
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["Leber", "Körper", "specks"]
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    observations = {int(o.ReferencedROINumber): o for o in ds.RTROIObservationsSequence}
    assert observations[1].RTROIIdentificationCodeSequence[0].CodeValue == "10200004"
    assert "RTROIIdentificationCodeSequence" not in observations[2]  # no code given: none invented
    assert observations[1].RTROIInterpretedType == ""


def test_a_series_from_a_zip_gives_the_same_structure_set(tmp_path):
    files = series_files("oblique")
    path = os.path.join(tmp_path, "export.zip")
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files:
            z.writestr(f"DICOM/{name}", data)
    uris = [f"{path}!/DICOM/{name}" for name, _ in files]
    [(volume, sources)] = read_files(list(zip(uris, read_objects(uris), strict=True)))
    [(_, plain)] = read_files([(f"mem://{n}", d) for n, d in files])
    labels = hard_labels(volume.shape)
    assert _comparable(_build(labels, sources).dataset) == _comparable(_build(labels, plain).dataset)


def _comparable(ds: pydicom.Dataset) -> bytes:
    """The object without its creation dates and times."""
    ds = pydicom.dcmread(io.BytesIO(rtstruct_bytes(ds)))
    for keyword in ("InstanceCreationDate", "InstanceCreationTime", "SeriesDate", "SeriesTime", "StructureSetDate",
                    "StructureSetTime"):
        delattr(ds, keyword)
    return rtstruct_bytes(ds)


def test_a_series_split_by_image_size_gives_one_structure_set_per_volume_with_its_own_images():
    big = series_files("axial")

    series_uid = pydicom.dcmread(io.BytesIO(big[0][1])).SeriesInstanceUID
    study_uid = pydicom.dcmread(io.BytesIO(big[0][1])).StudyInstanceUID
    small, _, _ = dicom_series(Phantom.random(3), SeriesSpec(rows=24, columns=24, n_slices=3), noise=False,
                               series_uid=series_uid, study_uid=study_uid)
    volumes = read_files([(f"mem://a/{n}", d) for n, d in big] + [(f"mem://b/{n}", d) for n, d in small])
    assert sorted(v.shape[2] for v, _ in volumes) == [3, 6]
    for volume, sources in volumes:
        labels = hard_labels(volume.shape)
        ds = _build(labels, sources).dataset
        _check_references(ds, sources, labels)
