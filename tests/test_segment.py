"""`unet segment` and `unet evaluate` over a synthetic archive in S3 (moto), with a bundle trained
by `unet train`: DICOM series in several orientations, NIfTI volumes, a zip export and junk."""
from __future__ import annotations

import gzip
import io
import json

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs import evaluate, segment
from unet_core.io import read_volume, storage
from unet_core.io.mask_codec import decode_mask
from unet_core.synthetic import write_demo_archive

@pytest.fixture(scope="module")
def archive(work_bucket):
    """(archive prefix, truth prefix, good volume count): see `write_demo_archive`."""
    demo = write_demo_archive(f"s3://{work_bucket}/archive", f"s3://{work_bucket}/truth")
    return demo.root, demo.truth, demo.good_volumes


@pytest.fixture(scope="module")
def first_run(archive, trained_bundle, work_bucket):
    root, _, _ = archive
    out = f"s3://{work_bucket}/segmented"
    rc = segment.main(["--input", root, "--model", trained_bundle, "--output", out, "--qc", "--batch-size", "8"])
    return out, rc


def _table(out):
    return pq.read_table(io.BytesIO(storage.read_bytes(f"{out}/volumes.parquet"))).to_pylist()


def test_every_good_volume_has_a_mask_on_its_source_grid(archive, first_run):
    _, _, n_good = archive
    out, rc = first_run
    assert rc == segment.EXIT_SOME_FAILED  # the junk failed, everything else is written
    rows = _table(out)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == n_good
    index = pq.read_table(io.BytesIO(storage.read_bytes(f"{out}/series_index.parquet"))).to_pylist()
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


def test_rerun_skips_and_overwrite_redoes(archive, first_run, trained_bundle):
    root, _, n_good = archive
    out, _ = first_run
    before = {r["volume_id"]: r["finished"] for r in _table(out) if r["status"] == "ok"}
    assert segment.main(["--input", root, "--model", trained_bundle, "--output", out]) == segment.EXIT_SOME_FAILED
    summary = json.loads(storage.read_bytes(f"{out}/summary.json"))
    assert summary["volumes_ok"] == n_good
    assert summary["segmented_now"] == 1  # only the broken NIfTI volume is retried
    rows = _table(out)
    assert len({r["volume_id"] for r in rows}) == len(rows)  # nothing duplicated
    assert {r["volume_id"]: r["finished"] for r in rows if r["status"] == "ok"} == before
    assert segment.main(["--input", root, "--model", trained_bundle, "--output", out, "--overwrite"]) == segment.EXIT_SOME_FAILED
    summary = json.loads(storage.read_bytes(f"{out}/summary.json"))
    assert summary["segmented_now"] == n_good + 1
