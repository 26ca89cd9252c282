"""Bad input contained, header text kept out of object names, no PHI or secrets in outputs or logs.

The bad-input kinds come from tests/badinput.py; docs/reliability.md lists them with what happens.
"""
from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs import segment
from support.badinput import SPLIT, write_bad, write_good
from unet_core.io import storage
from unet_core.segmentation.tables import read_volume_table
from unet_core.synthetic import Phantom, SeriesSpec, dicom_series, nifti_case

ROOT = Path(__file__).resolve().parent.parent
BOMB_BUDGET = 64 << 20


def _rows(out: str) -> list[dict]:
    return read_volume_table(out)


def _mask(uri: str) -> np.ndarray:
    return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(storage.read_bytes(uri))).dataobj)


def test_bad_input_is_contained(tmp_path, phantom_bundle, ray_local):
    clean, mixed = str(tmp_path / "clean"), str(tmp_path / "mixed")
    n_good = write_good(clean)
    write_good(mixed)
    expected = write_bad(mixed)
    assert len(expected) >= 20
    limits = ["--max-decompressed-bytes", str(BOMB_BUDGET)]
    assert segment.main(["--input", clean, "--model", phantom_bundle, "--output", f"{clean}-out", *limits]) == 0
    rc = segment.main(["--input", mixed, "--model", phantom_bundle, "--output", f"{mixed}-out", *limits])
    assert rc == segment.EXIT_SOME_FAILED

    def where(r: dict, root: str) -> str:  # the same volume in both archives: same relative source
        return r["source"][len(root):]

    clean_rows = {where(r, clean): r for r in _rows(f"{clean}-out")}
    rows = _rows(f"{mixed}-out")
    good = {where(r, mixed): r for r in rows if "/good/" in r["source"]}
    assert len(clean_rows) == n_good and sorted(good) == sorted(clean_rows)
    for key, r in good.items():  # every good volume is ok and its mask is the clean archive's mask
        assert r["status"] == "ok", r["error"]
        np.testing.assert_array_equal(_mask(r["mask_uri"]), _mask(clean_rows[key]["mask_uri"]))
        assert r["mask_voxels"] == clean_rows[key]["mask_voxels"]
    # a small model may find nothing in one small volume (CI once saw 0 voxels in the 108-voxel
    # NIfTI case); the comparison is meaningful as long as the good masks are not all empty
    assert sum(r["mask_voxels"] for r in good.values()) > 0

    by_kind: dict[str, list[dict]] = {}
    for r in rows:
        if "/bad/" in r["source"]:
            by_kind.setdefault(r["source"].split("/bad/")[1].split("/")[0], []).append(r)
    assert set(by_kind) == set(expected), set(expected) ^ set(by_kind)
    for kind, reason in expected.items():
        if reason == SPLIT:
            assert [r["status"] for r in by_kind[kind]] == ["ok", "ok"], kind
            continue
        (r,) = by_kind[kind]
        assert r["error_type"] == reason, (kind, r["error"])
        assert r["status"] == ("skipped" if reason == "non_image_object" else "error"), kind
        assert r["error"] and "Traceback" not in r["error"], kind
        assert r["mask_uri"] == "" or r["mask_uri"] is None, kind
    assert not any(r["error_type"] == "internal" for r in rows)  # no crash of a worker, no OOM
    masks = storage.list_files(f"{mixed}-out/masks")
    assert len(masks) == sum(r["status"] == "ok" for r in rows)  # nothing written for a failed volume


HOSTILE = "../../escaped/x"


def test_header_text_never_reaches_object_names(tmp_path, ray_local, phantom_bundle):
    """SeriesDescription, PatientName, even the UIDs hold path text: everything lands under --output."""
    import pydicom

    from unet_core.synthetic import to_bytes

    archive = tmp_path / "nest" / "archive"
    files, _, _ = dicom_series(Phantom.random(3), SeriesSpec(n_slices=6), seed=3, patient_name=HOSTILE,
                               patient_id="../" * 5 + "id", series_description=HOSTILE)
    for name, data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.SeriesInstanceUID = "1.2/../../../escaped"  # not a valid UID, but an archive may hold one
        ds.StudyDescription = "/etc/passwd"
        path = archive / "s" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(to_bytes(ds))
    image, _ = nifti_case(Phantom.random(4), np.diag([6.0, 6.0, 8.0, 1.0]), (32, 32, 6))
    (archive / "..%2F..%2Fescaped case;rm -rf.nii.gz").write_bytes(image)
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "nest" / "out"
    rc = segment.main(["--input", str(archive), "--model", phantom_bundle, "--output", str(out), "--qc"])
    assert rc == 0
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p == out or out in p.parents for p in created), sorted(map(str, created))
    for p in created:
        assert ".." not in p.name and "escaped case" not in p.name and ";" not in p.name
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "nest" / "escaped").exists()


# ---- PHI and secrets: a real run as a user would start it, every output and log searched -----------
PATIENT_NAME, PATIENT_ID, BIRTH_DATE = "QUIXOTE^ALONSO", "MRN-5550173", "19431107"
SECRET_KEY = "unetTESTsecret0f2b9c4d8e1a7f3b5c6d9e0a1b2c3d4e5f"
RAY_TOKEN = "5e3c1a9b7d2f4e6a8c0b1d3f5a7c9e2b"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLEsessionTOKENsentinel4c7d9e1f"
INVALID_BIRTH_DATE, INVALID_TIME = "07/11/1943", "25:61:07"  # not valid DA / TM


def _searchable(name: str, data: bytes) -> bytes:
    """An output's bytes as a reader would see them: gzip expanded, Parquet decoded."""
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    if name.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data))
        data += repr(table.to_pylist()).encode() + repr(table.schema.metadata).encode()
    return data


def _phi_run(tmp_path, s3_server, work_bucket, bundle, name, keep_phi):
    import pydicom

    from unet_core.synthetic import to_bytes

    root = f"s3://{work_bucket}/phi-{name}"
    files, _, _ = dicom_series(Phantom.random(8), SeriesSpec(n_slices=6), seed=8, patient_name=PATIENT_NAME,
                               patient_id=PATIENT_ID)
    for fname, data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.PatientBirthDate = BIRTH_DATE
        storage.write_bytes(f"{root}/archive/{fname}", to_bytes(ds))
    # a second series whose identifiers are not valid for their VR (exports of older systems): the
    # SEG leaves them out, and no error text quotes them
    files, _, _ = dicom_series(Phantom.random(9), SeriesSpec(n_slices=4), seed=9, patient_name=PATIENT_NAME,
                               patient_id=PATIENT_ID)
    for fname, data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.PatientBirthDate, ds.StudyTime = INVALID_BIRTH_DATE, INVALID_TIME
        storage.write_bytes(f"{root}/archive/old/{fname}", to_bytes(ds))
    # a failure, whose message is searched too: a two-slice series cut short (a lone slice would be
    # set aside as a localizer before its pixels are read)
    for k, (_, data) in enumerate(files[:2]):
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.PatientBirthDate = BIRTH_DATE
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID + ".9"
        ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".9"
        storage.write_bytes(f"{root}/archive/broken{k}.dcm", to_bytes(ds)[:-500])
    ray_tmp = Path(f"/tmp/rphi{os.getpid()}{name}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_SESSION_TOKEN=SESSION_TOKEN, RAY_TMPDIR=str(ray_tmp),
               RAY_AUTH_TOKEN=RAY_TOKEN, UNET_PROGRESS="1")
    args = ["--input", f"{root}/archive", "--model", bundle, "--output", f"{root}/out", "--qc", "--dicom-seg", "-v"]
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "segment", *args, *(["--keep-phi"] if keep_phi else [])],
                       cwd=ROOT, env=env, capture_output=True, timeout=600)
    assert r.returncode == segment.EXIT_SOME_FAILED, r.stderr[-3000:]
    texts = {"stdout": r.stdout, "stderr": r.stderr}
    for e in storage.list_files(f"{root}/out"):
        if "/seg/" not in e.uri:  # the SEGs carry the patient module by design (README, privacy)
            texts[e.uri] = _searchable(e.uri, storage.read_bytes(e.uri))
    logs = [p for p in ray_tmp.rglob("*") if p.is_file() and not p.is_socket()]
    assert any("worker" in p.name for p in logs), "no Ray worker logs were captured"
    for p in logs:
        texts[str(p)] = p.read_bytes()
    import shutil

    shutil.rmtree(ray_tmp, ignore_errors=True)
    return texts


def _found(texts: dict[str, bytes], needle: str) -> list[str]:
    return [where for where, data in texts.items() if needle.encode() in data]


@pytest.mark.e2e
def test_no_phi_or_secrets_in_outputs_or_logs(tmp_path, s3_server, work_bucket, phantom_bundle):
    texts = _phi_run(tmp_path, s3_server, work_bucket, phantom_bundle, "default", keep_phi=False)
    assert len(texts) > 10
    for needle in (PATIENT_NAME, PATIENT_NAME.replace("^", " "), PATIENT_ID, BIRTH_DATE, INVALID_BIRTH_DATE,
                   INVALID_TIME, SECRET_KEY, SESSION_TOKEN, RAY_TOKEN):
        assert not _found(texts, needle), (needle, _found(texts, needle))


@pytest.mark.slow
def test_the_phi_search_finds_identifiers_when_they_are_kept(tmp_path, s3_server, work_bucket, phantom_bundle):
    """The search above can fail: with --keep-phi the same run's outputs hold the identifiers."""
    texts = _phi_run(tmp_path, s3_server, work_bucket, phantom_bundle, "kept", keep_phi=True)
    assert _found(texts, PATIENT_ID) and _found(texts, BIRTH_DATE)
    assert not _found(texts, SECRET_KEY) and not _found(texts, RAY_TOKEN)


def test_a_record_that_cannot_be_written_is_an_error_row_not_a_crash(tmp_path):
    """The output store refuses the completion record: that volume is an error row of this run's
    table (not recorded complete, so the next run redoes it), and the job goes on."""
    from tests.support.segment_run import segment_settings
    from unet_core.errors import ErrorType
    from unet_core.segmentation.records import (
        Action,
        Format,
        PlannedVolume,
        Status,
        VolumeRecord,
    )
    from unet_core.segmentation.stages import Outcome, finish_and_write
    from unet_core.segmentation.tables import write_part

    blocked = tmp_path / "out"
    blocked.mkdir()
    (blocked / "records").write_bytes(b"a file where the records folder should be")
    s = segment_settings(str(blocked), model_identity="0" * 16, buckets=1)
    rec = VolumeRecord(volume_id="dcm-0123", source="s3://archive/series/", format="dicom", series_uid="1.2",
                       status=Status.ERROR, error="s3://archive/series/: truncated", error_type="truncated",
                       fingerprint="f" * 16)
    rec, how = finish_and_write(rec, None, None, s)
    assert how == Outcome.UNRECORDED and rec.status == Status.ERROR and rec.error_type == ErrorType.NOT_RECORDED
    assert "could not be recorded" in rec.error and "records/error/dcm-0123.parquet" in rec.error
    blocked.joinpath("records").unlink()
    planned = PlannedVolume(volume_id="dcm-0123", bucket=0, action=Action.SEGMENT, fingerprint="f" * 16,
                            format=Format.DICOM, source="s3://archive/series/", series_uid="1.2")
    counts = write_part(0, [planned], s)
    (r,) = read_volume_table(str(blocked))
    assert r["volume_id"] == "dcm-0123" and r["status"] == "error" and r["error_type"] == ErrorType.NOT_RECORDED
    assert counts.by_error_type == {ErrorType.NOT_RECORDED: 1} and counts.parts_written == 1
