"""`unet segment` and `unet evaluate` over a synthetic archive in S3 (moto), with a bundle
that segments the phantom's organ by intensity (tests/support/bundles.py): DICOM series in several orientations, NIfTI volumes, a zip export and junk."""
from __future__ import annotations

import gzip
import io
import json
import sys

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs import evaluate, segment
from jobs.predictors import no_predictor_left
from tests.support.segment_run import serial_run
from unet_core.io import read_volume, storage
from unet_core.io.mask_codec import decode_mask
from unet_core.segmentation.tables import read_series_index, read_volume_table
from unet_core.synthetic import write_demo_archive


@pytest.fixture(scope="module")
def archive(work_bucket):
    """(archive prefix, truth prefix, good volume count): see `write_demo_archive`."""
    demo = write_demo_archive(f"s3://{work_bucket}/archive", f"s3://{work_bucket}/truth")
    return demo.root, demo.truth, demo.good_volumes


@pytest.fixture(scope="module")
def first_run(archive, phantom_bundle, work_bucket):
    root, _, _ = archive
    out = f"s3://{work_bucket}/segmented"
    rc = segment.main(["--input", root, "--model", phantom_bundle, "--output", out, "--qc", "--batch-size", "8",
                       "--assume-modality", "CT"])  # the NIfTI volumes are CT: HU statistics for them too
    return out, rc


def _table(out):
    return read_volume_table(out)


def test_every_good_volume_has_a_mask_on_its_source_grid(archive, first_run):
    _, _, n_good = archive
    out, rc = first_run
    assert rc == segment.EXIT_SOME_FAILED  # the junk failed, everything else is written
    rows = _table(out)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == n_good
    index = read_series_index(out)
    for r in ok:
        uris = [i["uri"] for i in index if i["volume_id"] == r["volume_id"]]
        source = read_volume(uris[0] if r["format"] == "nifti" else uris)
        mask = nib.Nifti1Image.from_bytes(gzip.decompress(storage.read_bytes(r["mask_uri"])))
        assert mask.shape == source.shape and mask.get_data_dtype() == np.uint8
        np.testing.assert_allclose(mask.affine, source.affine, atol=1e-4)
        labels = np.asarray(mask.dataobj)
        assert r["mask_voxels"] == int((labels > 0).sum()) > 0 and r["n_slices"] == source.shape[2]
        assert r["mask_volume_ml"] == pytest.approx(r["mask_voxels"] * source.voxel_volume_ml)
        assert 60 < r["mean_hu_in_mask"] < 160  # the target organ is ~110 HU
        slices = pq.read_table(io.BytesIO(storage.read_bytes(r["slices_uri"]))).to_pylist()
        assert [s["slice_index"] for s in slices] == list(range(source.shape[2]))
        np.testing.assert_array_equal(np.stack([decode_mask(s) for s in slices], axis=-1), labels)
        assert storage.exists(r["qc_uri"])
        assert r["model"] == "phantom" and len(r["model_identity"]) == 16


def test_junk_is_in_the_table_with_reasons(first_run):
    out, _ = first_run
    by_source = {storage.basename(r["source"]): r for r in _table(out)}
    assert by_source["random.dcm"]["error_type"] == "not_dicom"
    assert by_source["empty.dcm"]["error_type"] == "empty_file"
    assert by_source["notes.txt"]["error_type"] == "not_dicom"
    assert by_source["truncated.dcm"]["status"] == "error" and "truncated" in by_source["truncated.dcm"]["error"]
    assert by_source["broken.nii.gz"]["error_type"] == "truncated"
    assert by_source["report.dcm"]["status"] == "skipped"
    assert by_source["resent_copy_truncated.dcm"]["status"] == "skipped"
    assert "duplicate copy of SOP instance" in by_source["resent_copy_truncated.dcm"]["error"]
    outside = [r for r in _table(out) if r["source"].endswith("!/../outside.dcm")]
    assert outside and "escapes the archive folder" in outside[0]["error"]


def test_dice_against_truth(archive, first_run):
    _, truth, n_good = archive
    out, _ = first_run
    assert evaluate.main(["--pred", out, "--truth", truth]) == 0
    rows = pq.read_table(io.BytesIO(storage.read_bytes(f"{out}/evaluation.parquet"))).to_pylist()
    assert len(rows) == n_good and all(r["status"] == "ok" for r in rows)
    dice = {r["volume_id"]: r["dice"] for r in rows}
    assert np.mean(list(dice.values())) > 0.6, dice
    assert all(r["hd95_mm"] >= 0 for r in rows)


def test_no_patient_identifiers_in_outputs(first_run):
    out, _ = first_run
    for entry in storage.list_files(out):
        if entry.uri.endswith((".parquet", ".json")):
            data = storage.read_bytes(entry.uri)
            assert b"DOE^JANE" not in data and b"MRN12345" not in data, entry.uri


def test_a_rerun_on_ray_skips_what_is_done_and_leaves_no_predictor(archive, first_run, phantom_bundle):
    root, _, n_good = archive
    out, _ = first_run
    before = {r["volume_id"]: r["finished"] for r in _table(out) if r["status"] == "ok"}
    failed_volumes = [r for r in _table(out) if r["status"] == "error" and not r["volume_id"].startswith("obj-")]
    # the cut DICOM slice is found truncated from its header at planning: an object row, not a volume
    assert {storage.basename(r["source"]) for r in failed_volumes} == {"broken.nii.gz"}
    assert segment.main(["--input", root, "--model", phantom_bundle, "--output", out]) == segment.EXIT_SOME_FAILED
    summary = json.loads(storage.read_bytes(f"{out}/summary.json"))
    assert summary["volumes_ok"] == n_good
    assert summary["segmented_now"] == len(failed_volumes)  # only failed volumes are retried
    assert 0 <= summary["predictor_wait_seconds"] <= summary["pipeline_seconds"]
    assert summary["scan_seconds"] + summary["pipeline_seconds"] <= summary["total_seconds"]
    assert no_predictor_left(timeout=10.0)  # the job's predictors went with it
    rows = _table(out)
    assert len({r["volume_id"] for r in rows}) == len(rows)  # nothing duplicated
    assert {r["volume_id"]: r["finished"] for r in rows if r["status"] == "ok"} == before
    # --overwrite redoing everything is the run's own decision: asked on the serial executor
    # (test_dicom_seg_added_by_a_rerun_matches_the_nifti_masks, tests/test_segment_safety.py)


@pytest.fixture(scope="module")
def local_archive(tmp_path_factory):
    """The demo archive in a local folder: (archive root, good volume count)."""
    root = tmp_path_factory.mktemp("demo")
    demo = write_demo_archive(str(root / "archive"), str(root / "truth"))
    return demo.root, demo.good_volumes


def test_dicom_seg_added_by_a_rerun_matches_the_nifti_masks(local_archive, tmp_path):
    """A re-run with --dicom-seg redoes the volumes that have no SEG yet; each SEG, read back with
    highdicom, puts the same labels on the source grid as the NIfTI mask; NIfTI inputs say why they
    have none; a further re-run carries everything over; only the SEGs hold patient identity. The
    run's bookkeeping on the serial executor (the Ray executor runs the same stages: above)."""
    import pydicom

    from support.seg_check import iod_problems, labels_on_grid, read_seg

    root, n_good = local_archive
    out = str(tmp_path / "out")
    serial_run([root], out, qc=True)
    n_failed = len([r for r in _table(out) if r["status"] == "error" and not r["volume_id"].startswith("obj-")])
    assert serial_run([root], out, dicom_seg=True).summary.segmented_now == n_good + n_failed
    ok = [r for r in _table(out) if r["status"] == "ok"]
    dicom = [r for r in ok if r["format"] == "dicom"]
    assert len(dicom) >= 3 and len(ok) == n_good
    for r in ok:
        if r["format"] == "nifti":
            assert r["seg_uri"] == "" and "NIfTI input has no DICOM source" in r["seg_skipped"]
            continue
        assert r["seg_uri"] == f"{out}/seg/{r['volume_id']}.dcm" and r["seg_skipped"] == ""
        data = storage.read_bytes(r["seg_uri"])
        ds = pydicom.dcmread(io.BytesIO(data))
        assert iod_problems(ds) == [] and ds.SegmentationType == "BINARY"
        assert str(ds.PatientName) == "DOE^JANE"  # the SEG carries the source's patient module
        mask = nib.Nifti1Image.from_bytes(gzip.decompress(storage.read_bytes(r["mask_uri"])))
        np.testing.assert_array_equal(labels_on_grid(read_seg(data), mask.affine, mask.shape), np.asarray(mask.dataobj))
    segs = [e.uri for e in storage.list_files(f"{out}/seg")]
    assert sorted(segs) == sorted(r["seg_uri"] for r in dicom)  # one per volume, nothing half-written
    for entry in storage.list_files(out):
        if entry.uri.endswith((".parquet", ".json")):
            assert b"DOE^JANE" not in storage.read_bytes(entry.uri), entry.uri

    assert serial_run([root], out, dicom_seg=True).summary.segmented_now == n_failed  # SEGs present: carried over

    uid = pydicom.dcmread(io.BytesIO(storage.read_bytes(dicom[0]["seg_uri"]))).SOPInstanceUID
    assert serial_run([root], out, overwrite=True, dicom_seg=True).summary.segmented_now == n_good + n_failed
    assert sorted(e.uri for e in storage.list_files(f"{out}/seg")) == sorted(segs)  # replaced, not added
    # the same volume and model give the same SEG UIDs: a PACS replaces the object, no duplicate
    assert pydicom.dcmread(io.BytesIO(storage.read_bytes(dicom[0]["seg_uri"]))).SOPInstanceUID == uid


def test_multiclass_bundle_gives_label_maps(tmp_path, ray_local):
    """A user's own softmax model with four labels, packaged as a bundle: masks are label maps and
    per-slice masks use the uint8 encoding. The model is a 1x1 convolution whose label steps up
    with windowed intensity (air 0, soft tissue 1, organ 2, bone 3), so the expected labels are known."""
    import keras

    from unet_core.bundle import package_model
    from unet_core.config import PreprocessConfig
    from unet_core.synthetic import Phantom, nifti_case

    model = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Conv2D(4, 1, activation="softmax", name="head")])
    model.get_layer("head").set_weights([np.array([0.0, 100.0, 200.0, 300.0], np.float32).reshape(1, 1, 1, 4),
                                         np.array([0.0, -30.0, -90.0, -180.0], np.float32)])
    model.save(tmp_path / "mine.keras")
    bundle = str(tmp_path / "multi")
    package_model(str(tmp_path / "mine.keras"), bundle, PreprocessConfig(input_size=32),
                  label_names=["background", "tissue", "organ", "bone"])
    image, _ = nifti_case(Phantom.random(1), np.diag([12.0, 12.0, 20.0, 1.0]), (32, 32, 8))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "case.nii.gz").write_bytes(image)
    out = str(tmp_path / "out")
    assert segment.main(["--input", str(tmp_path / "in"), "--model", bundle, "--output", out]) == 0
    row = _table(out)[0]
    assert row["modality"] == "" and row["mean_hu_in_mask"] is None  # a NIfTI says no modality: no HU
    mask = np.asarray(nib.load(row["mask_uri"]).dataobj)
    assert mask.dtype == np.uint8 and {0, 1, 2} <= set(np.unique(mask)) <= {0, 1, 2, 3}
    slices = pq.read_table(row["slices_uri"]).to_pylist()
    assert "uint8" in {s["mask_encoding"] for s in slices}
    np.testing.assert_array_equal(np.stack([decode_mask(s) for s in slices], axis=-1), mask)


def test_a_rerun_with_nothing_new_starts_no_cluster(tmp_path, ray_local, monkeypatch):
    """A re-run over an archive that did not change is planned in the job's own process
    (SegmentRun.plan_unchanged) and finishes with no Ray instance and no predictor (a changed
    partition sends planning to the executor: tests/test_partitions.py)."""
    from support.bundles import tiny_bundle
    from unet_core.synthetic import Phantom, nifti_case

    (tmp_path / "in").mkdir()
    for i in range(2):
        image, _ = nifti_case(Phantom.random(i), np.diag([12.0, 12.0, 20.0, 1.0]), (32, 32, 4))
        (tmp_path / "in" / f"case{i}.nii.gz").write_bytes(image)
    bundle = tiny_bundle(str(tmp_path / "bundle"))
    out = str(tmp_path / "out")
    args = ["--input", str(tmp_path / "in"), "--model", bundle, "--output", out]
    assert segment.main(args) == 0

    def no_cluster(*a, **k):
        raise AssertionError("a re-run with nothing new started Ray")

    with monkeypatch.context() as m:
        m.setattr(segment, "init_ray", no_cluster)
        m.setattr(segment, "Predictors", no_cluster)
        m.setitem(sys.modules, "ray", None)  # and no `import ray` on its way (it raises ImportError now)
        assert segment.main(args) == 0
    summary = json.loads(storage.read_bytes(f"{out}/summary.json"))
    assert (summary["segmented_now"], summary["headers_read"], summary["headers_unchanged"]) == (0, 0, 2)
    assert summary["volumes_ok"] == 2 and summary["predictors_started"] == 0
