"""--rtstruct on the serial executor: the table's columns, --overwrite, a re-run that adds it,
and what `unet status` and the report count."""
from __future__ import annotations

import io
import shutil
from dataclasses import replace

import numpy as np
import pydicom
import pytest

from jobs import status
from tests.support.segment_run import serial_run
from unet_core import ownership
from unet_core.io.dicom.rtstruct import NO_SOURCES
from unet_core.report import aggregate_volume_table
from unet_core.segmentation import delivery
from unet_core.segmentation.records import Format, RowKind, Status, VolumeRecord
from unet_core.segmentation.store import Folder, OutputStore, VolumeOutput
from unet_core.synthetic import Phantom, nifti_case
from unet_core.synthetic_studies import write_studies

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    write_studies(str(root), n_patients=2, studies_per_patient=1, size=16, seed=5, roles=("thick",))
    return root


def _archive(studies, tmp_path):
    root = tmp_path / "in"
    shutil.copytree(studies, root)
    return root


def _volumes(out) -> list[VolumeRecord]:
    return [r for r in OutputStore(str(out)).volume_table() if r.kind == RowKind.VOLUME and r.status == Status.OK]


def test_rtstruct_columns_files_and_counts(studies, tmp_path, capsys):
    root, out = _archive(studies, tmp_path), tmp_path / "out"
    serial_run([str(root)], str(out), rtstruct=True)
    rows = [r for r in _volumes(out) if r.format == Format.DICOM]
    assert rows
    store = OutputStore(str(out))
    for r in rows:
        assert r.rtstruct_uri == store.output_uri(VolumeOutput.RTSTRUCT, r.volume_id)
        assert not r.rtstruct_skipped.startswith(r.source), r.rtstruct_skipped  # not a failure text
        ds = pydicom.dcmread(r.rtstruct_uri)
        assert ds.SOPClassUID == RT_STRUCTURE_SET_STORAGE and ds.StructureSetROISequence
        assert not r.seg_uri  # not asked for
    assert ownership.is_owned(f"rtstruct/{rows[0].volume_id}.dcm")
    agg = aggregate_volume_table(str(out))
    assert (agg.segs, agg.rtstructs) == (0, len(rows))
    status.main([str(out)])
    assert f"DICOM objects: 0 SEGs, {len(rows)} RTSTRUCTs" in capsys.readouterr().out
    assert "rtstruct/ carries the patient and study modules" in serial_run([str(root)], str(out),
                                                                          rtstruct=True).summary.privacy()


def test_a_rerun_that_adds_rtstruct_makes_only_what_is_missing(studies, tmp_path):
    root, out = _archive(studies, tmp_path), tmp_path / "out"
    serial_run([str(root)], str(out), dicom_seg=True)
    before = {r.volume_id: r for r in _volumes(out)}
    assert before and all(r.seg_uri and not r.rtstruct_uri for r in before.values())
    added = serial_run([str(root)], str(out), dicom_seg=True, rtstruct=True)
    assert added.done.segmented == len(before)  # the volumes without an RTSTRUCT, redone once
    after = {r.volume_id: r for r in _volumes(out)}
    assert all(r.rtstruct_uri and r.seg_uri for r in after.values())
    again = serial_run([str(root)], str(out), dicom_seg=True, rtstruct=True)
    assert again.done.segmented == 0  # nothing missing now
    # a run without --rtstruct does not redo them either (it asks for less)
    assert serial_run([str(root)], str(out), dicom_seg=True).done.segmented == 0


def test_overwrite_clears_only_this_tools_rtstructs(studies, tmp_path):
    root, out = _archive(studies, tmp_path), tmp_path / "out"
    serial_run([str(root)], str(out), rtstruct=True)
    folder = out / Folder.RTSTRUCT.value
    theirs = folder / "notes.dcm"
    theirs.write_bytes(b"someone else's")
    mine = sorted(p.name for p in folder.iterdir() if p != theirs)
    assert mine
    serial_run([str(root)], str(out), overwrite=True)  # without --rtstruct: ours go, theirs stays
    assert sorted(p.name for p in folder.iterdir()) == ["notes.dcm"]
    assert all(not r.rtstruct_uri for r in _volumes(out))


def test_a_nifti_volume_has_no_rtstruct_and_says_why(tmp_path):
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    image, _ = nifti_case(Phantom.random(3), np.diag([6.0, 6.0, 8.0, 1.0]), (16, 16, 6), seed=3)
    (root / "case.nii.gz").write_bytes(image)
    serial_run([str(root)], str(out), rtstruct=True)
    (row,) = _volumes(out)
    assert row.rtstruct_uri == "" and row.rtstruct_skipped == NO_SOURCES


class FakePacs:
    """dicomweb.store's stand-in: keeps what it is given (by SOP Instance UID), acknowledges it."""

    def __init__(self):
        self.stored: dict[str, bytes] = {}

    def __call__(self, dest: str, data: bytes, expected=()):
        uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        assert list(expected) == [uid]
        self.stored[uid] = data
        return (uid,)


DEST = "dicomweb+http://pacs.example/dicom-web"


def _edit(out, volume_id: str, **changes) -> None:
    store = OutputStore(str(out))
    for b in range(store.read_layout().buckets):
        rows = store.read_volumes(b)
        if any(r.volume_id == volume_id for r in rows):
            store.write_volumes(b, [replace(r, **changes) if r.volume_id == volume_id else r for r in rows])
            return
    raise AssertionError(volume_id)


def test_send_stores_both_kinds_once_and_refuses_an_edited_row(studies, tmp_path, monkeypatch, capsys):
    pacs = FakePacs()
    monkeypatch.setattr(delivery.dicomweb, "store", pacs)
    root, out = _archive(studies, tmp_path), tmp_path / "out"
    first = serial_run([str(root)], str(out), dicom_seg=True, rtstruct=True, send_seg=DEST)
    rows = _volumes(out)
    assert len(rows) >= 2 and all(r.study_uid for r in rows)
    assert all(r.sent and r.sent_to == DEST and r.rtstruct_sent and r.rtstruct_sent_to == DEST
               and not r.send_error and not r.rtstruct_send_error for r in rows)
    assert len(pacs.stored) == 2 * len(rows) == first.done.sent + first.sent.sent
    assert first.done.rtstructs_sent + first.sent.rtstructs_sent == len(rows)
    for r in rows:  # the deterministic UIDs the rows' checks expect
        assert delivery.Kind.SEG.instance_uid(r) in pacs.stored
        assert delivery.Kind.RTSTRUCT.instance_uid(r) in pacs.stored
    status.main([str(out)])
    said = capsys.readouterr().out
    assert f"{len(rows)} SEGs stored at {DEST}" in said and f"{len(rows)} RTSTRUCTs stored at {DEST}" in said

    again = serial_run([str(root)], str(out), dicom_seg=True, rtstruct=True, send_seg=DEST)
    assert (again.done.sent, again.sent.sent, again.sent.already) == (0, 0, 2 * len(rows))

    # One row's files edited to name another volume's: refused, its row says why, nothing sent.
    a, b = rows[0], rows[1]
    _edit(out, a.volume_id, seg_uri=b.seg_uri, rtstruct_uri=b.rtstruct_uri, sent="", sent_to="",
          rtstruct_sent="", rtstruct_sent_to="")
    pacs.stored.clear()
    counts = delivery.send_pending(str(out), OutputStore(str(out)).read_layout().buckets, DEST, 1)
    assert (counts.sent, counts.failed) == (0, 2) and not pacs.stored
    (edited,) = [r for r in _volumes(out) if r.volume_id == a.volume_id]
    assert "not sent" in edited.send_error and "SOP Instance UID" in edited.send_error
    assert "not sent" in edited.rtstruct_send_error and "SOP Instance UID" in edited.rtstruct_send_error
    assert not edited.sent and not edited.rtstruct_sent

    # A file outside the output's seg/ and rtstruct/ folders: refused before it is read as DICOM.
    stray = tmp_path / "elsewhere.dcm"
    stray.write_bytes(open(b.seg_uri, "rb").read())
    _edit(out, a.volume_id, seg_uri=str(stray), rtstruct_uri="")
    counts = delivery.send_pending(str(out), OutputStore(str(out)).read_layout().buckets, DEST, 1)
    (edited,) = [r for r in _volumes(out) if r.volume_id == a.volume_id]
    assert counts.failed == 1 and not pacs.stored and "does not lie under" in edited.send_error
