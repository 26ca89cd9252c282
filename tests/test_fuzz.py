"""The input fuzzer: hypothesis mutates valid DICOM and NIfTI files (header values, lengths, VRs,
truncations, pixel data sizes; NIfTI header fields) and each case goes through every stage of a
segment run without Ray: the header scan, planning, decode, predict and write
(unet_core/segmentation). Next to the mutated file(s) lie a good DICOM series and a good NIfTI
volume. For every case:

- nothing raises out of a stage (no crash) and no item is an `internal` error;
- every object is accounted for: each has a row of the object index, and each row belongs to
  exactly one planned volume (segmented or set aside with its reason), with no volume id twice;
- the good volumes are `ok` with the masks of an undisturbed run (no good volume lost);
- no case takes longer than HANG_SECONDS (no hang).

The number of cases is the tier's Hypothesis profile (tests/conftest.py): 30 of each in `make
test` and 300 in the e2e tier (derandomized: the same cases every run), 2,000 in the slow tier
(random, and hypothesis keeps what fails). Every failure the fuzzer found is a fixed bug with a
named case in REGRESSIONS below, run in every tier.
"""
from __future__ import annotations

import contextlib
import gzip
import shutil
import signal
import tempfile
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.mutate import (
    LENGTHS,
    NIFTI_FIELDS,
    NIFTI_VALUES,
    PIXEL_DATA,
    VALUE_VRS,
    VALUES,
    VRS,
    gunzip,
    mutate_dicom,
    mutate_nifti,
)
from tests.support.segment_run import segment_settings
from unet_core.bundle import BundleInfo
from unet_core.config import PreprocessConfig
from unet_core.errors import InputError, ItemFailure
from unet_core.segmentation import planning
from unet_core.segmentation.records import (
    Action,
    Status,
    VolumeRecord,
)
from unet_core.segmentation.stages import segment_volume
from unet_core.synthetic import Phantom, SeriesSpec, dicom_series, nifti_case

HANG_SECONDS = 60
N_SLICES = 4
_SPEC = SeriesSpec(rows=16, columns=16, n_slices=N_SLICES)
GOOD_SERIES = dicom_series(Phantom.random(1), _SPEC, seed=1)[0]
MUTATED_SERIES = dicom_series(Phantom.random(2), _SPEC, seed=2)[0]
GOOD_NIFTI = nifti_case(Phantom.random(3), np.diag([6.0, 6.0, 8.0, 1.0]), (16, 16, N_SLICES), seed=3)[0]
MUTATED_NIFTI = gunzip(nifti_case(Phantom.random(4), np.diag([6.0, 6.0, 8.0, 1.0]), (16, 16, N_SLICES), seed=4)[0])
BUNDLE_INFO = BundleInfo(PreprocessConfig(input_size=16))


def predict(x: np.ndarray):
    """A deterministic stand-in for the model (the stages only need probabilities of the right shape)."""
    return np.clip(x[..., :1], 0.0, 1.0).astype(np.float32), 0.0, 1


@contextlib.contextmanager
def time_limit(seconds: int):
    def expired(signum, frame):
        raise TimeoutError(f"a fuzz case ran longer than {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_case(files: dict[str, bytes]) -> tuple[dict[str, VolumeRecord], dict[str, np.ndarray]]:
    """Every stage over `files` (name -> bytes) plus the good volumes; checks the invariants that
    hold for any input and returns the records and masks of the good volumes."""
    root = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        inputs = {"good/" + n: d for n, d in GOOD_SERIES} | {"good.nii.gz": GOOD_NIFTI} | files
        for name, data in inputs.items():
            (root / "in" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "in" / name).write_bytes(data)
        s = segment_settings(str(root / "out"), bundle_info=BUNDLE_INFO, model_name="fuzz", model_identity="fuzz-1",
                             buckets=1, resume=False)
        with time_limit(HANG_SECONDS):
            rows, _, _ = planning.scan_partition([planning.Unit(str(root / "in"), True)], [], s.limits, False, ())
            planned = planning.merge_bucket(planning.fragments_of(rows, 1), {}, s)
            records = []
            for p in planned:
                if p.action == Action.SEGMENT:
                    records.append(segment_volume(p, s, predict)[0])
                else:
                    records.append(p.record)
        # no internal error, anywhere
        internal = [r.reason for r in rows if r.error_type == "internal"] + \
                   [r.error for r in records if r.error_type == "internal"]
        assert not internal, internal
        # every object accounted for, once
        assert {r.object_uri for r in rows} == {str(root / "in" / n) for n in inputs}
        placed = Counter()
        for p in planned:
            members = p.members  # a volume (segmented, or its error found at planning)
            placed.update([m.uri for m in members] if members else [p.source])
        assert placed == Counter(r.uri for r in rows), (placed, [r.uri for r in rows])
        assert len({p.volume_id for p in planned}) == len(planned), [p.volume_id for p in planned]
        # the good volumes come through
        good = {}
        for r in records:
            if r.source.startswith(str(root / "in" / "good")):
                assert r.status == Status.OK, r.error
                good[Path(r.source).name] = np.asarray(nib.load(r.mask_uri).dataobj)
            elif r.status == Status.OK:
                assert Path(r.mask_uri).is_file()
            else:
                assert r.error and r.error_type, r
        assert set(good) == {"good", "good.nii.gz"}, good.keys()
        return {r.source: r for r in records}, good
    finally:
        shutil.rmtree(root, ignore_errors=True)


_BASELINE: dict[str, np.ndarray] = {}


def check(files: dict[str, bytes]) -> dict[str, VolumeRecord]:
    records, good = run_case(files)
    if not _BASELINE:
        _BASELINE.update(run_case({})[1])
    for name, mask in good.items():
        np.testing.assert_array_equal(mask, _BASELINE[name], err_msg=f"the good volume {name} changed")
    return records


def dicom_files(mutations: list[tuple[int, tuple]]) -> dict[str, bytes]:
    """The mutated series; a mutation's target is a slice index, or -1 for every slice."""
    files = {n: d for n, d in MUTATED_SERIES}
    names = sorted(files)
    for target, m in mutations:
        for n in names if target < 0 else [names[target % len(names)]]:
            files[n] = mutate_dicom(files[n], m)
    return {f"mut/{n}": d for n, d in files.items()}


def nifti_files(mutations: list[tuple], compress: bool) -> dict[str, bytes]:
    raw = MUTATED_NIFTI
    for m in mutations:
        raw = mutate_nifti(raw, m)
    return {"mut.nii.gz": gzip.compress(raw, mtime=0)} if compress else {"mut.nii": raw}


# ---- strategies ------------------------------------------------------------------------------------
_TAGS = sorted(VALUE_VRS) + [PIXEL_DATA]
_fraction = st.floats(0.0, 1.0, exclude_max=True, allow_nan=False)
dicom_mutation = st.one_of(
    st.sampled_from(sorted(VALUES)).flatmap(lambda t: st.tuples(st.just("value"), st.just(t), st.sampled_from(VALUES[t]))),
    st.tuples(st.just("delete"), st.sampled_from(_TAGS)),
    st.tuples(st.just("length"), st.sampled_from(_TAGS), st.one_of(st.sampled_from(LENGTHS), st.integers(0, 2**32 - 1))),
    st.tuples(st.just("vr"), st.sampled_from(_TAGS), st.sampled_from(VRS)),
    st.tuples(st.just("pixels"), st.integers(-600, 600)),
    st.tuples(st.just("truncate"), _fraction),
    st.tuples(st.just("flip"), _fraction, st.integers(0, 255)),
)
dicom_case = st.lists(st.tuples(st.integers(-1, N_SLICES - 1), dicom_mutation), min_size=1, max_size=3)
nifti_mutation = st.one_of(
    st.sampled_from(sorted(NIFTI_FIELDS)).flatmap(
        lambda n: st.tuples(st.just("field"), st.just(n), st.sampled_from(NIFTI_VALUES[n]))),
    st.tuples(st.just("truncate"), _fraction),
    st.tuples(st.just("flip"), _fraction, st.integers(0, 255)),
)
nifti_case_st = st.lists(nifti_mutation, min_size=1, max_size=3)

# How many cases run comes from the Hypothesis profile of the tier (tests/conftest.py): a few
# dozen derandomized in `make test`, hundreds in the e2e tier, thousands (random, failures kept)
# in the slow tier. The named regressions below run in every tier.
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)


@pytest.mark.fuzz
@FUZZ
@given(dicom_case)
def test_fuzz_dicom(mutations):
    check(dicom_files(mutations))


@pytest.mark.fuzz
@FUZZ
@given(nifti_case_st, st.booleans())
def test_fuzz_nifti(mutations, compress):
    check(nifti_files(mutations, compress))


def test_the_unmutated_case_segments_every_volume():
    """The harness itself: with nothing mutated, all four volumes are ok, so a mutation's effect
    on a row is the mutation's."""
    records = check(dicom_files([]) | nifti_files([], compress=False))
    assert len(records) == 4 and {r.status for r in records.values()} == {Status.OK}


def test_the_harness_catches_a_lost_good_volume(monkeypatch):
    """The harness can fail: a stage that loses the good series is caught."""
    import unet_core.segmentation.stages as stages

    real = stages.decode_volume

    def loses_the_good_series(planned, s):
        d = real(planned, s)
        if "/good/" in planned.source:
            return stages.Decoded(None, None, ItemFailure.of(planned.source, InputError(f"{planned.source}: lost")),
                                  d.seconds)
        return d

    monkeypatch.setattr(stages, "decode_volume", loses_the_good_series)
    with pytest.raises(AssertionError, match="good/: lost"):
        check({})


# ---- what the fuzzer found ----------------------------------------------------------------------------
# Each failure it found, fixed, kept as a named case: (files of the case).
REGRESSIONS = {
    # an empty TransferSyntaxUID raised pydicom's "UID is not a transfer syntax" in decode (internal);
    # now the data set's own encoding decides, as for a missing one
    "empty_transfer_syntax": lambda: dicom_files([(0, ("value", 0x00020010, ""))]),
    # a TransferSyntaxUID that is not one: unsupported_pixel_data, naming the UID
    "unknown_transfer_syntax": lambda: dicom_files([(-1, ("value", 0x00020010, "1.2.3"))]),
    # Rows 0 on one slice: a 1-slice volume of no pixels reached the resize (IndexError); now the
    # header scan makes it an unsupported_pixel_data row
    "zero_rows": lambda: dicom_files([(0, ("value", 0x00280010, 0))]),
    # direction cosines of 1e308 overflowed the slice normal (SVD did not converge); the header
    # scan now checks orientation, position and pixel spacing (series_geometry)
    "huge_orientation": lambda: dicom_files([(0, ("value", 0x00200037, "1e308\\0\\0\\0\\1\\0"))]),
    "parallel_orientation": lambda: dicom_files([(-1, ("value", 0x00200037, "1\\0\\0\\1\\0\\0"))]),
    "huge_position": lambda: dicom_files([(1, ("value", 0x00200032, "1e308\\0\\0"))]),
    "zero_pixel_spacing": lambda: dicom_files([(-1, ("value", 0x00280030, "0\\0"))]),
    # no BitsAllocated reached the decoder (AttributeError); the header scan now checks the pixel
    # description (bits allocated / stored, representation, photometric interpretation)
    "no_bits_allocated": lambda: dicom_files([(0, ("delete", 0x00280100))]),
    "bits_allocated_12": lambda: dicom_files([(-1, ("value", 0x00280100, 12))]),
    "bits_stored_above_allocated": lambda: dicom_files([(2, ("value", 0x00280101, 17))]),
    "palette_colour": lambda: dicom_files([(-1, ("value", 0x00280004, "PALETTE COLOR"))]),
    # the deflated transfer syntax over plain bytes: zlib.error escaped the parse (internal)
    # an empty PixelData element (value None in pydicom): TypeError in the length check
    "empty_pixel_data": lambda: dicom_files([(0, ("pixels", -512))]),
    # MediaStorageSOPClassUID given VR UL: pydicom's BytesLengthException where the value was
    # first used (decode); an exception raised inside pydicom on one object's data is now that
    # object's `unreadable` error (unet_core/io/dicom/parse.py: library_errors)
    "meta_uid_as_ul": lambda: dicom_files([(0, ("vr", 0x00020002, b"UL"))]),
    # an unknown VR ('XX') on ImageType: NotImplementedError from pydicom in the header scan
    "unknown_vr_in_header": lambda: dicom_files([(1, ("vr", 0x00080008, b"XX"))]),
    # NIfTI: an sform with a zero column: nibabel's OrientationError when the grid was made
    # canonical (internal); read_nifti now checks the affine (unet_core/volume.py: affine_problem)
    "nifti_singular_sform": lambda: nifti_files([("field", "srow_x0", 0.0)], compress=False),
    # a scrambled VR on BodyPartExamined in every slice: reading the volume's descriptions raised
    # (internal); a description pydicom cannot interpret is now left empty
    "scrambled_description_vr": lambda: dicom_files([(-1, ("flip", 0.47265625, 0))]),
    # Rows given VR DS: int() of its text raised ValueError in the header scan (internal)
    "rows_as_text": lambda: dicom_files([(0, ("vr", 0x00280010, b"DS"))]),
    "samples_per_pixel_as_text": lambda: dicom_files([(0, ("vr", 0x00280002, b"DS"))]),
    "samples_per_pixel_as_tag": lambda: dicom_files([(0, ("vr", 0x00280002, b"AT"))]),
    # NumberOfFrames -1e38: the scan read it leniently as 1, decode as -1e38, and the pixel buffer's
    # size overflowed (OverflowError); both now read it one way, and a count below 1 is an error
    "negative_frame_count": lambda: dicom_files([(0, ("value", 0x00280008, "-1e38"))]),
    # PixelSpacing 1e-300: positive, but the grid underflowed (nibabel OrientationError); sizes
    # below 1e-4 mm are refused, and every DICOM volume's affine is checked as NIfTI's is
    "vanishing_pixel_spacing": lambda: dicom_files([(-1, ("value", 0x00280030, "1e-300\\1e-300"))]),
    # NIfTI vox_offset NaN: nibabel's "cannot convert float NaN to integer" (internal)
    "nifti_nan_vox_offset": lambda: nifti_files([("field", "vox_offset", float("nan"))], compress=False),
    "deflate_syntax_over_plain_bytes": lambda: dicom_files([(0, ("value", 0x00020010, "1.2.840.10008.1.2.1.99"))]),
    # every slice the same SOPInstanceUID: copies of one instance with different pixels, a
    # conflicting_instances error of the volume that names them (its objects are its members)
    "one_sop_instance_for_every_slice": lambda: dicom_files([(-1, ("value", 0x00080018, "1.2.3"))]),
}


# What each case is now: the error type of the mutated object's row.
EXPECTED = {
    "empty_transfer_syntax": "", "unknown_transfer_syntax": "unsupported_pixel_data",
    "zero_rows": "unsupported_pixel_data", "huge_orientation": "series_geometry",
    "parallel_orientation": "series_geometry", "huge_position": "series_geometry",
    "zero_pixel_spacing": "series_geometry", "vanishing_pixel_spacing": "series_geometry",
    "no_bits_allocated": "unsupported_pixel_data", "bits_allocated_12": "unsupported_pixel_data",
    "bits_stored_above_allocated": "unsupported_pixel_data", "palette_colour": "unsupported_pixel_data",
    "empty_pixel_data": "truncated", "meta_uid_as_ul": "unreadable", "unknown_vr_in_header": "unreadable",
    "scrambled_description_vr": "truncated", "rows_as_text": "unreadable", "samples_per_pixel_as_text": "unreadable",
    "samples_per_pixel_as_tag": "unsupported_pixel_data", "negative_frame_count": "unreadable",
    "deflate_syntax_over_plain_bytes": "unreadable", "one_sop_instance_for_every_slice": "conflicting_instances",
    "nifti_singular_sform": "invalid_volume",
    "nifti_nan_vox_offset": "invalid_volume",
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_fuzz_regression(name):
    records = check(REGRESSIONS[name]())
    mutated = {r.error_type for source, r in records.items() if "/good" not in source}
    assert EXPECTED[name] in mutated, (name, mutated)
