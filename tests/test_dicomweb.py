"""`unet segment` straight from a PACS and back: a real Orthanc with its DICOMweb plugin on a
loopback port (tests/support/orthanc.py; authentication on), loaded with a synthetic archive.

- Read from DICOMweb, the masks equal the same archive read from a folder, voxel for voxel.
- --send-seg stores one SEG per volume under its study, referencing its source series; a re-run
  sends nothing; a changed instance redoes its volume and sends its new SEG once; `unet send`
  then finds nothing pending.
- Faults: wrong credentials (exit 5, nothing written), 429 answers with Retry-After through a
  proxy (honoured: same masks), Orthanc stopped mid-run (storage rows, exit 3, a re-run resumes).
- A gateway in front of Orthanc that redirects STOW-RS: first the findings reproduced with
  dicomweb-client as `store()` once used it (a 302 to a login page read as stored; a 307 POSTing
  the object to another host), then `store()` and `unet send` refusing both; a gateway that
  trickles its answers fails at the request's deadline.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from jobs import segment, send, status
from jobs.exits import Exit
from support.orthanc import Orthanc
from support.throttle import LOGIN_PATH, ThrottlingProxy
from unet_core.segmentation.summary import RunSummary
from unet_core.segmentation.tables import read_volume_table
from unet_core.synthetic_studies import write_studies

pytestmark = pytest.mark.e2e
ROLES = ("thin", "thick", "lung", "dose")


def _files(root: str) -> list[str]:
    return sorted(str(p) for p in Path(root).rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("pacs") / "archive"
    series = write_studies(str(root), n_patients=2, studies_per_patient=1, size=32, seed=21, roles=ROLES)
    return str(root), {s.series_uid: s for s in series}


@pytest.fixture(scope="module")
def pacs(orthanc_binary, archive, tmp_path_factory):
    with Orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        server.upload(_files(archive[0]))
        yield server


@pytest.fixture(scope="module")
def from_folder(archive, phantom_bundle, ray_local, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("folder") / "out")
    assert segment.main(["--input", archive[0], "--model", phantom_bundle, "--output", out,
                         "--batch-size", "8"]) == Exit.OK
    return out


def _masks(out: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    found = {}
    for r in read_volume_table(out):
        if r["status"] == "ok":
            img = nib.load(r["mask_uri"])
            found[r["volume_id"]] = (np.asarray(img.dataobj), img.affine)
    return found


def _same_masks(a: str, b: str) -> None:
    ma, mb = _masks(a), _masks(b)
    assert sorted(ma) == sorted(mb) and ma
    for vid in ma:
        assert np.array_equal(ma[vid][0], mb[vid][0]), vid
        assert np.allclose(ma[vid][1], mb[vid][1]), vid


def _segs(pacs: Orthanc) -> list:
    return pacs.datasets_of_modality("SEG")


def test_the_selection_rules_plan_the_same_volumes_from_dicomweb_as_from_the_folder(pacs, archive, phantom_bundle,
                                                                                   tmp_path):
    """The rules decide from the same header fields, whether they come from files or from WADO-RS
    metadata; a free-text pattern (the kernel) is matched where the metadata is read."""
    import pyarrow.parquet as pq
    import yaml

    rules = tmp_path / "chest.yaml"
    rules.write_text(yaml.safe_dump({"modality": ["CT"], "orientation": "axial", "slice_thickness_mm": [0.5, 3.0],
                                     "convolution_kernel": "^B[1-4]", "one_per_study": "thinnest"}))
    plans = {}
    for side, uri in (("folder", archive[0]), ("dicomweb", pacs.dicomweb)):
        out = tmp_path / side
        assert segment.main(["--input", uri, "--model", phantom_bundle, "--output", str(out), "--select", str(rules),
                             "--plan-only"]) == Exit.OK
        plans[side] = sorted((r["volume_id"], r["plan"], r["reason"].split(": ", 1)[-1])
                             for r in pq.read_table(out / "plan.parquet").to_pylist())
    assert plans["folder"] == plans["dicomweb"]
    assert {p for _, p, _ in plans["dicomweb"]} == {"segment", "not_selected"}


def test_a_query_file_filters_the_studies_listed(pacs, archive, phantom_bundle, tmp_path):
    """QIDO-RS filters from --dicomweb-query (here one patient, CT) list only their studies; a
    filter that matches nothing is a clear error, not an empty output."""
    import pyarrow.parquet as pq
    import yaml

    series = archive[1]
    patient, study = next((s.patient, s.study_uid) for s in series.values())
    query = tmp_path / "query.yaml"
    query.write_text(yaml.safe_dump({"PatientID": patient, "Modality": "CT"}))
    out = tmp_path / "out"
    assert segment.main(["--input", pacs.dicomweb, "--dicomweb-query", str(query), "--model", phantom_bundle,
                         "--output", str(out), "--plan-only"]) == Exit.OK
    plan = pq.read_table(out / "plan.parquet").to_pylist()
    assert plan and {r["study_uid"] for r in plan} == {study}
    assert len(plan) == sum(s.study_uid == study and s.role != "dose" for s in series.values())
    query.write_text(yaml.safe_dump({"StudyDate": "19000101-19000102"}))
    assert segment.main(["--input", pacs.dicomweb, "--dicomweb-query", str(query), "--model", phantom_bundle,
                         "--output", str(tmp_path / "none"), "--plan-only"]) == Exit.USAGE


def test_from_dicomweb_equals_the_folder_and_each_seg_is_sent_once(pacs, archive, from_folder, phantom_bundle,
                                                                    tmp_path, capsys):
    root, series = archive
    out = str(tmp_path / "out")
    args = ["--input", pacs.dicomweb, "--model", phantom_bundle, "--output", out, "--batch-size", "8",
            "--send-seg", pacs.dicomweb]
    assert segment.main(args) == Exit.OK
    _same_masks(from_folder, out)
    rows = [r for r in read_volume_table(out) if r["status"] == "ok"]
    assert rows and all(r["sent"] and r["sent_to"] == pacs.dicomweb and not r["send_error"] for r in rows)
    assert all(r["source"] == f"{pacs.dicomweb}/studies/{series[r['series_uid']].study_uid}/series/{r['series_uid']}"
               for r in rows)  # a volume's source is its series' WADO-RS URI
    segs = _segs(pacs)
    assert len(segs) == len(rows)
    by_series = {r["series_uid"]: r for r in rows}
    for seg in segs:  # under the source's study, referencing the source series
        source = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        assert source in by_series
        assert seg.StudyInstanceUID == series[source].study_uid
    assert f"sent {len(rows)} SEGs" in capsys.readouterr().out

    # A re-run reads no header and sends nothing; the server keeps one copy of each SEG.
    assert segment.main(args) == Exit.OK
    s = RunSummary.read(out)
    assert (s.headers_read, s.segmented_now, s.segs_sent) == (0, 0, 0)
    assert len(_segs(pacs)) == len(rows)

    # A changed image is a new instance: its volume alone is redone, and its new SEG sent once.
    thin = next(s for s in series.values() if s.role == "thin")
    first = sorted(p for p in _files(root) if pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID
                   == thin.series_uid)[0]
    ds = pydicom.dcmread(first)
    old_uid = ds.SOPInstanceUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = (ds.pixel_array + 1).astype(ds.pixel_array.dtype).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    pacs.replace_instance(old_uid, buf.getvalue())
    assert segment.main(args) == Exit.OK
    s = RunSummary.read(out)
    assert (s.headers_read, s.segmented_now, s.segs_sent) == (1, 1, 1)
    assert len(_segs(pacs)) == len(rows) + 1

    # `unet send` finds every SEG stored already; `unet status` says where they went.
    assert send.main([out, "--to", pacs.dicomweb]) == Exit.OK
    assert "sent 0 SEGs" in capsys.readouterr().out
    assert len(_segs(pacs)) == len(rows) + 1
    assert status.main([out]) == Exit.OK
    assert f"delivery: {len(rows)} SEGs stored at {pacs.dicomweb}" in capsys.readouterr().out


def test_unet_send_records_refusals_and_a_second_send_stores_them_once(pacs, archive, phantom_bundle, tmp_path,
                                                                      capsys):
    out = str(tmp_path / "out")
    assert segment.main(["--input", archive[0], "--model", phantom_bundle, "--output", out, "--batch-size", "8",
                         "--dicom-seg"]) == Exit.OK
    before = len(_segs(pacs))
    with ThrottlingProxy(pacs.port, every=0, post_status=400) as proxy:
        to = f"dicomweb+http://127.0.0.1:{proxy.port}/dicom-web"
        assert send.main([out, "--to", to]) == Exit.SOME_FAILED  # the PACS refuses every store
        rows = [r for r in read_volume_table(out) if r["status"] == "ok"]
        assert rows and all(not r["sent"] and "HTTP 400" in r["send_error"] for r in rows)
        assert f"{len(rows)} could not be sent" in capsys.readouterr().out
        assert len(_segs(pacs)) == before

        proxy.post_status = None  # it takes them now: each pending SEG is sent once
        assert send.main([out, "--to", to]) == Exit.OK
        rows = [r for r in read_volume_table(out) if r["status"] == "ok"]
        assert all(r["sent"] and r["sent_to"] == to and not r["send_error"] for r in rows)
        assert f"sent {len(rows)} SEGs" in capsys.readouterr().out
        after = len(_segs(pacs))
        # Made from the folder, these SEGs may equal ones the PACS holds already (one volume's
        # instances differ there after the changed-instance test): at most one new instance each.
        assert before < after <= before + len(rows)
        assert send.main([out, "--to", to]) == Exit.OK
        assert "sent 0 SEGs" in capsys.readouterr().out
    assert len(_segs(pacs)) == after


def test_wrong_credentials_fail_before_anything_is_written(pacs, phantom_bundle, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DICOMWEB_PASSWORD", "wrong")
    out = tmp_path / "out"
    assert segment.main(["--input", pacs.dicomweb, "--model", phantom_bundle, "--output", str(out)]) == Exit.STORAGE
    err = caplog.text
    assert "access denied" in err and "DICOMWEB_USER" in err and "wrong" not in err
    assert not out.exists()


def test_429_with_retry_after_is_honoured(pacs, from_folder, phantom_bundle, tmp_path, capsys, caplog):
    with ThrottlingProxy(pacs.port, every=5, retry_after="1") as proxy:
        url = f"dicomweb+http://127.0.0.1:{proxy.port}/dicom-web"
        out = str(tmp_path / "out")
        assert segment.main(["--input", url, "--model", phantom_bundle, "--output", out, "--batch-size", "8",
                             "-v"]) == Exit.OK
    seen = capsys.readouterr()
    assert pacs.auth[1] not in seen.out + seen.err + caplog.text  # -v shows everything but the password
    assert proxy.refused >= 5
    assert all(p in proxy.forwarded_paths for p in proxy.paths)  # each refused request was asked again
    # The PACS also holds the SEGs of the test above: they are not listed (not images).
    _same_masks(from_folder, out)


def _unet(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def test_orthanc_stopped_mid_run_gives_storage_rows_and_a_rerun_resumes(orthanc_binary, archive, phantom_bundle,
                                                                          from_folder, tmp_path):
    root, series = archive
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        server.upload(_files(root))
        out = tmp_path / "out"
        env = {**os.environ, "UNET_DICOMWEB_RETRIES": "2", **server.env()}
        args = ["segment", "--input", server.dicomweb, "--model", phantom_bundle, "--output", str(out),
                "--batch-size", "8", "--dicomweb-concurrency", "1", "--num-cpus", "2"]
        proc = _unet(*args, env=env)
        records = out / "records" / "ok"
        deadline = time.time() + 300
        while time.time() < deadline and not (records.exists() and any(records.iterdir())):
            time.sleep(0.05)
        server.stop()  # one volume is done, the others are not
        text, _ = proc.communicate(timeout=300)
        assert proc.returncode == Exit.SOME_FAILED, text
        rows = [r for r in read_volume_table(str(out)) if not r["volume_id"].startswith("obj-")]
        failed = [r for r in rows if r["status"] == "error"]
        assert failed and all(r["error_type"] == "storage" for r in failed), failed
        assert all("cannot be reached" in r["error"] for r in failed)
        assert "Traceback" not in text

        server.start()  # the same storage: the PACS is back
        again = _unet(*args, env=env)
        text, _ = again.communicate(timeout=300)
        assert again.returncode == Exit.OK, text
        s = RunSummary.read(str(out))
        assert s.segmented_now == len(failed)
        _same_masks(from_folder, str(out))
    finally:
        server.stop()


# ---- a gateway that redirects or trickles (issue 32's findings, reproduced, then refused) -------------
def _new_instance(archive) -> tuple[bytes, str]:
    """One CT slice of the archive as a new instance (a new SOP Instance UID): bytes, UID."""
    path = _files(archive[0])[0]
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), str(ds.SOPInstanceUID)


def _held(pacs: Orthanc, uid: str) -> bool:
    import requests

    found = requests.post(f"{pacs.url}/tools/lookup", data=uid, auth=pacs.auth, timeout=60).json()
    return any(f["Type"] == "Instance" for f in found)


class _Recorder:
    """Another host (127.0.0.2: loopback, but not the service's address) that records what it is sent."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        bodies = self.bodies = []

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.2", 0), H)
        self.url = f"http://127.0.0.2:{self.server.server_address[1]}/elsewhere/studies"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _library_store(root: str, data: bytes):
    """What `store()` did before: dicomweb-client's store_instances, its answer read for failures."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    session.auth = (os.environ["DICOMWEB_USER"], os.environ["DICOMWEB_PASSWORD"])
    c = DICOMwebClient(root, session=session)
    c.set_http_retry_params(retry=False)
    return c.store_instances([pydicom.dcmread(io.BytesIO(data))])


def test_a_stow_redirected_to_a_login_page_is_not_a_store(pacs, archive):
    from unet_core.errors import StorageError
    from unet_core.io import dicomweb

    data, uid = _new_instance(archive)
    with ThrottlingProxy(pacs.port, every=0) as gateway:
        gateway.post_redirect = (302, f"http://127.0.0.1:{gateway.port}{LOGIN_PATH}?next=%2Fdicom-web&sid=s3cr3t")
        root = f"http://127.0.0.1:{gateway.port}/dicom-web"
        # The finding: the 302 is followed to the login page, its 200 HTML reads as a success.
        answer = _library_store(root, data)
        assert not getattr(answer, "FailedSOPSequence", None) and not getattr(answer, "ReferencedSOPSequence", None)
        assert gateway.received == 2 and not _held(pacs, uid)
        # Now: a send_error naming the redirect and where it pointed (not its query), nothing stored.
        with pytest.raises(StorageError, match=rf"redirect \(HTTP 302 to http://127.0.0.1:{gateway.port}"
                                               rf"{LOGIN_PATH}\), which is not followed") as info:
            dicomweb.store("dicomweb+" + root, data)
        assert "s3cr3t" not in str(info.value)
        assert gateway.received == 3  # the POST only: the login page was not asked for
        # The same gateway once the session is back: stored, and acknowledged by Orthanc.
        gateway.post_redirect = None
        assert dicomweb.store("dicomweb+" + root, data) == (uid,)
    assert _held(pacs, uid)


def test_a_stow_redirected_to_another_host_sends_it_nothing(pacs, archive):
    from unet_core.errors import StorageError
    from unet_core.io import dicomweb

    data, uid = _new_instance(archive)
    elsewhere = _Recorder()
    try:
        with ThrottlingProxy(pacs.port, every=0, post_redirect=(307, elsewhere.url)) as gateway:
            root = f"http://127.0.0.1:{gateway.port}/dicom-web"
            # The finding: requests POSTs the object (patient data) again, to the other host.
            _library_store(root, data)
            assert len(elsewhere.bodies) == 1 and data in elsewhere.bodies[0]
            with pytest.raises(StorageError, match=r"redirect \(HTTP 307 to http://127.0.0.2:\d+/elsewhere/studies\)"):
                dicomweb.store("dicomweb+" + root, data)
        assert len(elsewhere.bodies) == 1  # nothing more went there
    finally:
        elsewhere.close()
    assert not _held(pacs, uid)


def test_unet_send_behind_a_redirecting_gateway_marks_nothing_sent(pacs, archive, phantom_bundle, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert segment.main(["--input", archive[0], "--model", phantom_bundle, "--output", out, "--batch-size", "8",
                         "--dicom-seg"]) == Exit.OK
    before = len(_segs(pacs))
    with ThrottlingProxy(pacs.port, every=0) as gateway:
        gateway.post_redirect = (302, f"http://127.0.0.1:{gateway.port}{LOGIN_PATH}")
        to = f"dicomweb+http://127.0.0.1:{gateway.port}/dicom-web"
        assert send.main([out, "--to", to]) == Exit.SOME_FAILED
        rows = [r for r in read_volume_table(out) if r["status"] == "ok"]
        assert rows and all(not r["sent"] and not r["sent_to"] and "redirect (HTTP 302" in r["send_error"]
                            for r in rows)
        assert f"{len(rows)} could not be sent" in capsys.readouterr().out
    assert len(_segs(pacs)) == before


def test_a_gateway_that_trickles_its_answer_fails_at_the_deadline(pacs, monkeypatch):
    from unet_core.errors import StorageError
    from unet_core.io import dicomweb, dicomweb_http

    monkeypatch.setattr(dicomweb_http, "DEADLINE_SECONDS", 2.0)
    with ThrottlingProxy(pacs.port, every=0, trickle=0.5) as gateway:
        start = time.monotonic()
        with pytest.raises(StorageError, match="did not finish its answer within 2 s"):
            dicomweb.studies(dicomweb.parse(f"dicomweb+http://127.0.0.1:{gateway.port}/dicom-web"))
        assert time.monotonic() - start < 10
