"""DICOM SEG output (unet_core/io/dicom_seg.py) without Ray: every geometry the reader supports
round-trips through highdicom, voxel by voxel against the NIfTI mask of the same labels; the
SEG IOD's required attributes are present; segment descriptions come from the bundle."""
from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from support.seg_check import iod_problems, labels_on_grid, profile_problems, read_seg
from unet_core.config import PreprocessConfig
from unet_core.errors import ConfigError
from unet_core.io.dicom.grouping import group_series
from unet_core.io.dicom.header import scan_header
from unet_core.io.dicom.seg import (
    DEFAULT_CODE,
    SegIdentity,
    SegSkipped,
    build_seg,
    seg_bytes,
)
from unet_core.io.dicom.series import read_series_with_sources
from unet_core.io.nifti import mask_to_nifti_bytes
from unet_core.synthetic import TARGET, Phantom, SeriesSpec, dicom_series

IDENT = SegIdentity("liver-unet", "0123456789abcdef", "0.1.0")
BINARY = ["background", "organ"]


def _series(spec: SeriesSpec, seed: int = 3, **kw):
    """(files, the phantom's target organ as 0/1 labels on the series grid)."""
    files, hu, truth = dicom_series(Phantom.random(seed), spec, seed=seed, noise=False, **kw)
    return [(f"mem://{name}", data) for name, data in files], (truth == TARGET).astype(np.uint8)


def _read(files, keep_phi=False):
    groups, aside = group_series([scan_header(data, uri) for uri, data in files])
    assert not aside
    blobs = dict(files)
    return [read_series_with_sources(g, [blobs[u] for u in g.uris], keep_phi=keep_phi) for g in groups]


def _nifti(labels, volume) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(mask_to_nifti_bytes(labels, volume)))


def _round_trip(labels, volume, sources, names=BINARY, codes=None):
    data = seg_bytes(build_seg(labels, sources, names, codes or {}, IDENT, volume.volume_id, "fp"))
    seg = read_seg(data)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert iod_problems(ds) == []
    assert profile_problems(ds, sources.datasets) == []
    nii = _nifti(labels, volume)
    back = labels_on_grid(seg, nii.affine, nii.shape)
    np.testing.assert_array_equal(back, np.asarray(nii.dataobj))
    return ds, seg


GEOMETRIES = {
    "axial": SeriesSpec(rows=40, columns=48, n_slices=10, pixel_spacing=(7.0, 6.0), slice_step=9.0),
    "axial descending": SeriesSpec(rows=40, columns=48, n_slices=10, pixel_spacing=(7.0, 6.0), slice_step=9.0,
                                   descending=True),
    "flipped rows": SeriesSpec(rows=40, columns=40, n_slices=8, flip_rows=True),
    "coronal": SeriesSpec(orientation="coronal", rows=36, columns=40, n_slices=8),
    "sagittal": SeriesSpec(orientation="sagittal", rows=36, columns=40, n_slices=8),
    "oblique": SeriesSpec(orientation="oblique", rows=36, columns=36, n_slices=8),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_seg_round_trips_every_geometry(name):
    files, truth = _series(GEOMETRIES[name])
    [(volume, sources)] = _read(files)
    np.testing.assert_array_equal(volume.voxels.shape, truth.shape)
    labels = truth.astype(np.uint8)
    assert labels.any() and not labels.all()
    ds, _ = _round_trip(labels, volume, sources)
    # frames are pixel-aligned with the source slices: one frame per non-empty source slice
    assert int(ds.NumberOfFrames) == int(labels.any(axis=(0, 1)).sum())


def test_seg_of_an_enhanced_multiframe_source():
    path = get_testdata_file("eCT_Supplemental.dcm")  # 2 frames, stored feet-first
    with open(path, "rb") as f:
        data = f.read()
    [(volume, sources)] = _read([(path, data)])
    assert len(sources.datasets) == 1 and sources.frames == [(0, 1), (0, 0)]
    labels = (volume.voxels > 0).astype(np.uint8)
    labels[:, :, 1] = 0  # only the second grid slice (source frame 1) is empty: frame order matters
    labels[:200, :, 0] = 0
    ds, _ = _round_trip(labels, volume, sources)
    assert int(ds.NumberOfFrames) == 1
    ref = ds.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert int(ref.ReferencedFrameNumber) == 2  # grid slice 0 is the source's second frame


def test_series_split_by_size_gives_one_seg_per_volume_referencing_its_own_images():
    big, _ = _series(SeriesSpec(rows=32, columns=32, n_slices=6), series_uid="1.2.826.0.1.3680043.8.498.77")
    small, _ = _series(SeriesSpec(rows=24, columns=24, n_slices=4), series_uid="1.2.826.0.1.3680043.8.498.77")
    small = [(u.replace("IM", "SMALL"), d) for u, d in small]
    volumes = _read(big + small)
    assert sorted(v.shape[2] for v, _ in volumes) == [4, 6]
    sops = set()
    for volume, sources in volumes:
        labels = (volume.voxels > -200).astype(np.uint8)
        ds, _ = _round_trip(labels, volume, sources)
        refs = {r.ReferencedSOPInstanceUID for f in ds.PerFrameFunctionalGroupsSequence
                for d in f.DerivationImageSequence for r in d.SourceImageSequence}
        assert refs <= {str(s.SOPInstanceUID) for s in sources.datasets}
        sops |= refs
    assert len(sops) == 10


def test_multi_class_bundle_gives_one_segment_per_label_with_the_bundle_codes():
    files, truth = _series(GEOMETRIES["axial"])
    [(volume, sources)] = _read(files)
    labels = truth.astype(np.uint8)
    labels[(volume.voxels > -500) & (labels == 0)] = 2  # "body": everything else inside the body
    names = ["background", "organ", "body"]
    codes = {"organ": {"category": {"scheme": "SCT", "value": "123037004", "meaning": "Anatomical Structure"},
                       "type": {"scheme": "SCT", "value": "10200004", "meaning": "Liver"}}}
    ds, seg = _round_trip(labels, volume, sources, names, codes)
    segments = {int(s.SegmentNumber): s for s in ds.SegmentSequence}
    assert sorted(segments) == [1, 2]
    assert segments[1].SegmentLabel == "organ" and segments[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert segments[2].SegmentLabel == "body"
    assert segments[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == DEFAULT_CODE["value"]
    algo = segments[1].SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("liver-unet", "0123456789abcdef")
    assert "unet-ray 0.1.0" in algo.AlgorithmSource
    assert ds.SoftwareVersions == "0.1.0"


def test_empty_mask_is_a_valid_seg_with_every_frame_empty():
    files, truth = _series(GEOMETRIES["coronal"])
    [(volume, sources)] = _read(files)
    labels = np.zeros(volume.shape, np.uint8)
    ds, seg = _round_trip(labels, volume, sources)
    assert int(ds.NumberOfFrames) == volume.shape[2]
    assert not seg.get_volume(combine_segments=True).array.any()


def test_seg_carries_patient_and_study_but_new_series_and_deterministic_uids():
    files, truth = _series(GEOMETRIES["axial"], patient_name="DOE^JANE", patient_id="MRN123")
    [(volume, sources)] = _read(files)  # keep_phi off: the tables would not hold these
    assert "PatientName" not in volume.metadata
    one = build_seg(truth, sources, BINARY, {}, IDENT, volume.volume_id, "fp")
    again = build_seg(truth, sources, BINARY, {}, IDENT, volume.volume_id, "fp")
    other = build_seg(truth, sources, BINARY, {}, IDENT, volume.volume_id, "fp2")
    assert (one.PatientName, one.PatientID) == ("DOE^JANE", "MRN123")
    assert one.SOPInstanceUID == again.SOPInstanceUID and one.SeriesInstanceUID == again.SeriesInstanceUID
    assert one.SOPInstanceUID != other.SOPInstanceUID
    assert one.FrameOfReferenceUID == sources.datasets[0].FrameOfReferenceUID


def test_several_multiframe_objects_are_skipped_with_a_reason():
    files, truth = _series(GEOMETRIES["axial"])
    [(volume, sources)] = _read(files)
    sources.datasets[0].NumberOfFrames = 2
    with pytest.raises(SegSkipped, match="multi-frame"):
        build_seg(truth, sources, BINARY, {}, IDENT, volume.volume_id, "fp")


def test_iod_check_can_fail():
    files, truth = _series(GEOMETRIES["axial"])
    [(volume, sources)] = _read(files)
    ds = pydicom.dcmread(io.BytesIO(seg_bytes(build_seg(truth, sources, BINARY, {}, IDENT, "v", "fp"))))
    assert iod_problems(ds) == []
    del ds.SegmentSequence[0].SegmentLabel
    ds.ContentLabel = ""
    del ds.PatientID
    del ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    del ds.PerFrameFunctionalGroupsSequence[1].FrameContentSequence
    problems = iod_problems(ds)
    assert any("PixelMeasuresSequence[0].PixelSpacing (type 1) is missing" in p for p in problems)
    assert any("FrameContentSequence is neither shared nor in every frame" in p for p in problems)
    assert any("SegmentSequence[0].SegmentLabel (type 1) is missing" in p for p in problems)
    assert any("ContentLabel (type 1) is empty" in p for p in problems)
    assert any("PatientID (type 2) is missing" in p for p in problems)
    ds.SegmentationType = "FRACTIONAL"
    assert "SegmentationType FRACTIONAL" in profile_problems(ds, sources.datasets)


@pytest.mark.parametrize("codes, match", [
    ({"liver": {"category": DEFAULT_CODE, "type": DEFAULT_CODE}}, "not a foreground label"),
    ({"organ": {"type": DEFAULT_CODE}}, "exactly 'category' and 'type'"),
    ({"organ": {"category": DEFAULT_CODE, "type": {"scheme": "SCT", "value": ""}}}, "non-empty strings"),
])
def test_bad_segment_codes_in_a_bundle_are_refused(codes, match):
    from unet_core.bundle import BundleInfo

    with pytest.raises(ConfigError, match=match):
        BundleInfo(preprocess=PreprocessConfig(), label_names=BINARY, segment_codes=codes)


def test_invalid_patient_and_study_values_are_left_out_of_the_seg_by_keyword(tmp_path):
    """Values not valid for their VR (a birth date 31/12/1960, a time 25:61, a PN of four component
    groups, an over-long LO) are
    left empty (type 2) or out (type 3) in the SEG, named by keyword, never by value; the SEG is
    still a valid object on its sources, and the sources are not changed."""
    from unet_core.synthetic import to_bytes

    files, truth = _series(SeriesSpec(rows=24, columns=24, n_slices=4))
    edited = []
    for uri, data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.PatientBirthDate = "31/12/1960"
        ds.StudyTime = "25:61"
        ds.StudyDescription = "WHOLE BODY " * 10  # 110 characters: LO holds 64
        ds.ReferringPhysicianName = "SANCHO=PANZA=X=Y"  # four component groups: PN holds three
        edited.append((uri, to_bytes(ds)))
    ((volume, sources),) = _read(edited)
    repaired: set[str] = set()
    data = seg_bytes(build_seg(truth, sources, BINARY, {}, IDENT, volume.volume_id, "fp", repaired))
    assert repaired == {"PatientBirthDate", "StudyTime", "StudyDescription", "ReferringPhysicianName"}
    assert b"31/12/1960" not in data and b"25:61" not in data and b"WHOLE BODY" not in data and b"SANCHO" not in data
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.PatientBirthDate == "" and ds.StudyTime == "" and "StudyDescription" not in ds
    assert iod_problems(ds) == []
    assert sources.datasets[0].PatientBirthDate == "31/12/1960"  # the source is untouched
