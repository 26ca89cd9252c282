"""`unet segment --rtstruct` end to end (Ray, the CLI entry points): dciodvfy finds no error in the
RTSTRUCT a real run writes, and against a real Orthanc `--send` stores SEG and RTSTRUCT, a re-run
sends nothing new, and `unet send` refuses a row whose seg_uri was edited to another patient's CT
file (exit 3, that row's send error, nothing stored). Needs dicom3tools, orthanc and
orthanc-dicomweb (apt; `.ci/run` installs them)."""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest

from jobs import segment, send
from jobs.exits import Exit
from support.orthanc import Orthanc
from unet_core.segmentation.records import RowKind, Status
from unet_core.segmentation.store import OutputStore
from unet_core.segmentation.summary import RunSummary
from unet_core.synthetic_studies import write_studies

pytestmark = pytest.mark.e2e


def _files(root: str) -> list[str]:
    return sorted(str(p) for p in Path(root).rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("rt") / "archive"
    write_studies(str(root), n_patients=2, studies_per_patient=1, size=32, seed=31, roles=("thick",))
    return str(root)


@pytest.fixture(scope="module")
def pacs(orthanc_binary, archive, tmp_path_factory):
    with Orthanc(tmp_path_factory.mktemp("orthanc-rt")) as server:
        server.upload(_files(archive))
        yield server


def _timeless(ds) -> dict:
    return {tag: v for tag, v in ds.to_json_dict().items() if v.get("vr") not in ("DA", "TM", "DT")}


def _ok(out: str):
    return [r for r in OutputStore(out).volume_table() if r.kind == RowKind.VOLUME and r.status == Status.OK]


def test_dciodvfy_finds_no_error_in_the_rtstruct_of_a_run(archive, phantom_bundle, ray_local, tmp_path):
    if shutil.which("dciodvfy") is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy is not installed (apt-get install dicom3tools)")
        pytest.skip("dciodvfy is not installed (apt-get install dicom3tools)")
    out = str(tmp_path / "out")
    assert segment.main(["--input", archive, "--model", phantom_bundle, "--output", out, "--batch-size", "8",
                         "--rtstruct"]) == Exit.OK
    rows = _ok(out)
    assert rows and all(r.rtstruct_uri for r in rows)
    for r in rows:
        done = subprocess.run(["dciodvfy", r.rtstruct_uri], capture_output=True, text=True, timeout=120)
        errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], (r.volume_id, errors)


def test_send_stores_both_kinds_once_and_unet_send_refuses_an_edited_row(pacs, archive, phantom_bundle, ray_local,
                                                                         tmp_path, capsys):
    out = str(tmp_path / "out")
    args = ["--input", archive, "--model", phantom_bundle, "--output", out, "--batch-size", "8",
            "--dicom-seg", "--rtstruct", "--send", pacs.dicomweb]
    assert segment.main(args) == Exit.OK
    rows = _ok(out)
    assert len(rows) == 2
    assert all(r.sent and r.rtstruct_sent and r.sent_to == r.rtstruct_sent_to == pacs.dicomweb for r in rows)
    segs, rts = pacs.datasets_of_modality("SEG"), pacs.datasets_of_modality("RTSTRUCT")
    assert len(segs) == len(rts) == len(rows)
    by_series = {r.series_uid: r for r in rows}
    for rt in rts:  # under the source's study, with the UID its row expects
        frame = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
        row = by_series[frame.RTReferencedSeriesSequence[0].SeriesInstanceUID]
        assert rt.StudyInstanceUID == row.study_uid
    assert "sent 2 SEGs and 2 RTSTRUCTs" in capsys.readouterr().out

    assert segment.main(args) == Exit.OK  # a re-run sends nothing new
    assert RunSummary.read(out).segs_sent == 0
    assert len(pacs.datasets_of_modality("SEG")) == len(pacs.datasets_of_modality("RTSTRUCT")) == len(rows)

    # One row's seg_uri edited to the other patient's CT file (and marked unsent): refused.
    edited, other = rows
    ct = next(f for f in _files(archive)
              if pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID == other.series_uid)
    store = OutputStore(out)
    for b in range(store.read_layout().buckets):
        part = store.read_volumes(b)
        if any(r.volume_id == edited.volume_id for r in part):
            store.write_volumes(b, [replace(r, seg_uri=ct, sent="", sent_to="") if r.volume_id == edited.volume_id
                                    else r for r in part])
    stored = len(pacs.get("/instances"))
    capsys.readouterr()
    assert send.main([out, "--to", pacs.dicomweb]) == Exit.SOME_FAILED
    said = capsys.readouterr().out
    (row,) = [r for r in _ok(out) if r.volume_id == edited.volume_id]
    assert not row.sent and "not sent" in row.send_error and "does not lie under" in row.send_error
    assert f"not sent: {edited.volume_id}" in said
    assert len(pacs.get("/instances")) == stored


def test_unet_send_delivers_an_outputs_rtstructs_and_the_pacs_gives_back_the_same_objects(pacs, archive, phantom_bundle,
                                                                                           ray_local, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert segment.main(["--input", archive, "--model", phantom_bundle, "--output", out, "--batch-size", "8",
                         "--rtstruct"]) == Exit.OK  # no --send: `unet send` delivers afterwards
    rows = _ok(out)
    assert len(rows) == 2 and all(r.rtstruct_uri and not r.rtstruct_sent for r in rows)
    capsys.readouterr()
    assert send.main([out, "--to", pacs.dicomweb]) == Exit.OK
    assert "sent 0 SEGs and 2 RTSTRUCTs" in capsys.readouterr().out
    rows = _ok(out)
    assert all(r.rtstruct_sent and r.rtstruct_sent_to == pacs.dicomweb for r in rows)
    stored = {ds.SOPInstanceUID: ds for ds in pacs.datasets_of_modality("RTSTRUCT")}
    for r in rows:  # what the PACS gives back is the object written, element for element
        mine = pydicom.dcmread(r.rtstruct_uri)
        # Its body (the PACS may redo the meta header), less the creation dates and times: a PACS that
        # already held the same deterministic UID (an earlier run's) keeps the copy it has.
        assert _timeless(stored[mine.SOPInstanceUID]) == _timeless(mine)
    capsys.readouterr()
    assert send.main([out, "--to", pacs.dicomweb]) == Exit.OK  # nothing new
    assert "sent 0 SEGs to" in capsys.readouterr().out
