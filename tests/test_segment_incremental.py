"""`unet segment` at archive scale, on a real local Ray instance per run: a re-run reads no header
of an unchanged object (counted as GET requests at the S3 server, through a loopback proxy), new
and changed objects cost only their own reads, and a volume whose model kills its predictor is
retried a bounded number of times and becomes an error row while the job completes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from support.bundles import tiny_bundle
from support.faultproxy import FaultProxy
from support.jobrun import ROOT, job_env, run_unet
from unet_core.io import storage
from unet_core.segmentation.tables import read_volume_table
from unet_core.synthetic import Phantom, SeriesSpec, dicom_series, nifti_case


def _untrained_bundle(path: str, size: int = 32) -> str:
    return tiny_bundle(path, size)


def _write_series(root: str, name: str, seed: int, n: int = 5) -> list[str]:
    uris = []
    for fname, data in dicom_series(Phantom.random(seed), SeriesSpec(rows=32, columns=32, n_slices=n), seed=seed)[0]:
        uris.append(storage.join(root, name, fname))
        storage.write_bytes(uris[-1], data)
    return uris


def _key_gets(requests: list[str], bucket: str, prefix: str) -> list[str]:
    """GET requests of objects (not listings) below `prefix` of `bucket`."""
    objects = [r.split(" ")[1] for r in requests if r.startswith("GET ") and "list-type" not in r]
    return [o for o in objects if o.startswith(f"/{bucket}/{prefix}")]


@pytest.mark.e2e
def test_a_rerun_reads_no_header_of_an_unchanged_object(tmp_path, s3_server, work_bucket):
    port = int(s3_server.rsplit(":", 1)[1])
    root, out = f"s3://{work_bucket}/incr/archive", f"s3://{work_bucket}/incr/out"
    series = {f"s{i}": _write_series(root, f"p{i % 2}/s{i}", seed=i) for i in range(4)}
    bundle = _untrained_bundle(str(tmp_path / "bundle"))
    with FaultProxy(port) as proxy:
        env = job_env(AWS_ENDPOINT_URL=proxy.endpoint, TF_CPP_MIN_LOG_LEVEL="3")
        args = ("segment", "--input", root, "--model", bundle, "--output", out, "--batch-size", "8")
        rc, log = run_unet(*args, env=env)
        assert rc == 0, log[-3000:]
        assert len(_key_gets(proxy.requests, work_bucket, "incr/archive")) >= 20  # headers and pixels were read

        proxy.requests.clear()
        rc, log = run_unet(*args, env=env)
        assert rc == 0, log[-3000:]
        assert _key_gets(proxy.requests, work_bucket, "incr/archive") == []  # not one object read
        summary = json.loads(storage.read_bytes(f"{out}/summary.json"))
        assert summary["headers_read"] == 0 and summary["headers_unchanged"] == 20 and summary["segmented_now"] == 0

        before = {r["volume_id"]: r for r in read_volume_table(out)}
        late = storage.join(root, "p0/s2/IM00099.dcm")  # a late slice of s2, one step beyond the others
        storage.write_bytes(late, _late_slice(series["s2"][-2], series["s2"][-1]))
        storage.write_bytes(series["s3"][1], storage.read_bytes(series["s3"][1]))  # rewritten, same content
        new = _write_series(root, "p1/s9", seed=9)
        proxy.requests.clear()
        rc, log = run_unet(*args, env=env)
        assert rc == 0, log[-3000:]
        read = set(_key_gets(proxy.requests, work_bucket, "incr/archive"))
    summary = json.loads(storage.read_bytes(f"{out}/summary.json"))
    assert summary["headers_read"] == 1 + len(new) and summary["segmented_now"] == 2, summary
    untouched = {u for name in ("s0", "s1", "s3") for u in series[name]}  # s3: same bytes, same ETag
    assert not {u.replace("s3://", "/") for u in untouched} & read  # unchanged volumes: no read at all
    assert {u.replace("s3://", "/") for u in [late, *new]} <= read
    after = {r["volume_id"]: r for r in read_volume_table(out)}
    assert len(after) == len(before) + 1 and all(r["status"] == "ok" for r in after.values())
    redone = {v for v in after if v not in before or after[v]["finished"] != before[v]["finished"]}
    assert len(redone) == 2
    (grown,) = [after[v] for v in redone if v in before]
    assert grown["n_slices"] == 6 and grown["fingerprint"] != before[grown["volume_id"]]["fingerprint"]


def _late_slice(second_last_uri: str, last_uri: str) -> bytes:
    """A new slice of the same series, one slice step beyond `last_uri`."""
    import io

    import pydicom
    from pydicom.uid import generate_uid

    a, b = (pydicom.dcmread(io.BytesIO(storage.read_bytes(u))) for u in (second_last_uri, last_uri))
    step = np.array(b.ImagePositionPatient, float) - np.array(a.ImagePositionPatient, float)
    b.ImagePositionPatient = [f"{v:.6f}" for v in np.array(b.ImagePositionPatient, float) + step]
    b.SOPInstanceUID = b.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    b.InstanceNumber = int(b.InstanceNumber) + 1
    buf = io.BytesIO()
    b.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.e2e
def test_a_volume_that_kills_its_predictor_is_an_error_row(tmp_path):
    """The model exits its process on one marked volume: that volume is retried on a restarted
    predictor a bounded number of times, then becomes an `error` row of type `prediction`; every
    other volume is segmented and the job ends with exit status 3."""
    import keras

    from support.poison_model import KillOnSaturatedSlice
    from unet_core.bundle import package_model
    from unet_core.config import PreprocessConfig

    model = keras.Sequential([keras.Input((32, 32, 1)), KillOnSaturatedSlice(),
                              keras.layers.Conv2D(1, 1, activation="sigmoid", name="head")])
    model.save(tmp_path / "poison.keras")
    bundle = str(tmp_path / "bundle")
    package_model(str(tmp_path / "poison.keras"), bundle, PreprocessConfig(input_size=32),
                  keras_modules=["support.poison_model"])
    archive = tmp_path / "archive"
    archive.mkdir()
    affine = np.diag([12.0, 12.0, 20.0, 1.0])
    for i in range(3):
        image, _ = nifti_case(Phantom.random(i), affine, (32, 32, 6), seed=i)
        (archive / f"case{i}.nii.gz").write_bytes(image)
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.full((32, 32, 6), 3000.0, np.float32), affine), str(archive / "marked.nii.gz"))
    out = str(tmp_path / "out")
    rc, log = run_unet("segment", "--input", str(archive), "--model", bundle, "--output", out,
                       "--prediction-attempts", "2", env=job_env(PYTHONPATH=str(ROOT / "tests"), TF_CPP_MIN_LOG_LEVEL="3"),
                       timeout=600)
    assert rc == 3, log[-4000:]
    rows = {storage.basename(r["source"]): r for r in read_volume_table(out)}
    bad = rows.pop("marked.nii.gz")
    assert bad["status"] == "error" and bad["error_type"] == "prediction" and bad["attempts"] == 2, bad
    assert "predictor process died" in bad["error"] and "after 2 attempts" in bad["error"]
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows.values()), rows
    assert f"failed: {bad['volume_id']}" in log and bad["volume_id"].startswith("nii-")
