"""Delivering a volume's DICOM objects (SEG, RTSTRUCT) to a PACS over DICOMweb (STOW-RS), once
each, resumably.

    send_record(rec, dest, out)       -> the record with each pending kind stored (its `sent` and
                                         `sent_to` columns) or refused (its `send_error`)
    send_pending(out, dest, workers, check=lease.check)
                                      -> every ok volume of an output with an object not stored at
                                         `dest` yet: stored, and its table row updated

The volume table records delivery per kind (`Kind`): `sent` / `sent_to` / `send_error` for the SEG
(as before RTSTRUCTs existed), `rtstruct_sent` / `rtstruct_sent_to` / `rtstruct_send_error` for
the RTSTRUCT. Before a file goes out, `outgoing.outgoing` checks it is the object its row means
(under `<output>/seg|rtstruct/`, its SOP Class, its deterministic SOP Instance UID, the row's
study and source series); a refusal is that kind's send error, and nothing is sent.

An object's UIDs are a function of its volume, its inputs' fingerprint and the model, so sending it
again stores the same instance: the server keeps one copy. A volume redone because its inputs
changed has new objects, sent once. Table parts are rewritten whole (write then publish), one part
at a time; the output's lease keeps other writers out. With `check` (the lease's fence), it is called
before each object is sent and before each part is rewritten: a run that lost the output raises
LeaseLost there and sends and rewrites nothing more (an object sent just before is the same
instance when the new holder sends it again).
"""
from __future__ import annotations

import enum
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable

from unet_core.errors import ItemFailure, StorageError
from unet_core.io import dicomweb, storage
from unet_core.io.dicom import outgoing
from unet_core.segmentation.records import RowKind, Status, VolumeRecord
from unet_core.segmentation.store import OutputStore

MAX_ERRORS_SHOWN = 10


class Kind(enum.StrEnum):
    """A kind of DICOM object a volume may have, named as its folder under the output."""

    SEG = "seg"
    RTSTRUCT = "rtstruct"

    @property
    def columns(self) -> tuple[str, str, str, str]:
        """(file, sent, sent_to, send_error): its columns of the volume table."""
        return _COLUMNS[self]

    @property
    def label(self) -> str:
        return "SEG" if self == Kind.SEG else "RTSTRUCT"

    def instance_uid(self, rec: VolumeRecord) -> str:
        rule = outgoing.seg_instance_uid if self == Kind.SEG else outgoing.rtstruct_instance_uid
        return rule(rec.volume_id, rec.fingerprint, rec.model_identity)


_COLUMNS = {Kind.SEG: ("seg_uri", "sent", "sent_to", "send_error"),
            Kind.RTSTRUCT: ("rtstruct_uri", "rtstruct_sent", "rtstruct_sent_to", "rtstruct_send_error")}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def expected_of(rec: VolumeRecord, kind: Kind, study_uid: str = "") -> outgoing.Expected:
    """What the row says its object of `kind` is (`study_uid`: when the row predates that column)."""
    return outgoing.Expected(kind.instance_uid(rec), rec.study_uid or study_uid, rec.series_uid,
                             outgoing.FOLDER_CLASSES[kind.value])


def send_one(rec: VolumeRecord, dest: str, out: str, kind: Kind, study_uid: str = "") -> VolumeRecord:
    """Store `rec`'s object of `kind` at `dest` once `outgoing` accepts it; never raises."""
    file_col, sent_col, to_col, error_col = kind.columns
    uri = getattr(rec, file_col)
    try:
        outgoing.deliverable_folder(out, uri)  # a file outside seg/ and rtstruct/ is not even read
        data = storage.read_bytes(uri)
        expected = expected_of(rec, kind, study_uid)
        outgoing.outgoing(out, uri, data, expected)
        dicomweb.store(dest, data, expected=[expected.sop_instance_uid])
        return replace(rec, **{sent_col: _now(), to_col: dest, error_col: ""})
    except Exception as exc:  # noqa: BLE001 - one object, not the job: its row says why
        failure = ItemFailure.of(uri, exc, f"sending the {kind.label}")
        error = failure.error if isinstance(exc, (StorageError, outgoing.OutgoingObjectError)) \
            else f"{uri}: not stored at {dest}: " + failure.error
        return replace(rec, **{sent_col: "", to_col: "", error_col: error})


def is_pending(rec: VolumeRecord, dest: str, kind: Kind = Kind.SEG) -> bool:
    """An ok row with an object of `kind` that is not stored at `dest`."""
    file_col, sent_col, to_col, _ = kind.columns
    return rec.status == Status.OK and bool(getattr(rec, file_col)) and not (
        getattr(rec, sent_col) and getattr(rec, to_col) == dest)


def send_record(rec: VolumeRecord, dest: str, out: str, study_uid: str = "") -> VolumeRecord:
    """Every pending object of `rec` stored at `dest` (each kind's columns say how it went)."""
    for kind in Kind:
        if is_pending(rec, dest, kind):
            rec = send_one(rec, dest, out, kind, study_uid)
    return rec


@dataclass
class SendCounts:
    """DICOM objects (SEGs and RTSTRUCTs together; `rtstructs_sent` of them RTSTRUCTs)."""

    sent: int = 0  # stored now
    failed: int = 0  # tried now and refused or failed (send_error, rtstruct_send_error)
    already: int = 0  # stored at this destination before
    without_seg: int = 0  # ok volumes with no DICOM object (NIfTI inputs, or made without --dicom-seg / --rtstruct)
    rtstructs_sent: int = 0  # of `sent`, RT Structure Sets
    errors: list[tuple[str, str]] = field(default_factory=list)  # (volume id, send error), a few

    def add(self, other: "SendCounts") -> None:
        self.sent, self.failed = self.sent + other.sent, self.failed + other.failed
        self.already, self.without_seg = self.already + other.already, self.without_seg + other.without_seg
        self.rtstructs_sent += other.rtstructs_sent
        self.errors = (self.errors + other.errors)[:MAX_ERRORS_SHOWN]


def _legacy_studies(store: OutputStore) -> dict[str, str]:
    """volume id -> study UID from the series index, for rows written before the study_uid column."""
    return {r.volume_id: r.study_uid for r in store.series_index() if r.volume_id and r.study_uid}


Check = Callable[[], None]  # raises LeaseLost when the run no longer holds the output


def _no_check() -> None:
    return None


def send_part(out: str, bucket: int, dest: str, check: Check = _no_check) -> SendCounts:
    """Send the pending objects of one volume-table part; the part is rewritten when any row changed.
    `check()` runs before each send and before the rewrite (outside send_one's guard: a lost lease
    stops the part, it is not that object's send error)."""
    store = OutputStore(out)
    rows, counts, changed = store.read_volumes(bucket), SendCounts(), False
    studies: dict[str, str] | None = None
    for i, row in enumerate(rows):
        if row.status != Status.OK or row.kind != RowKind.VOLUME:
            continue
        kinds = [k for k in Kind if getattr(row, k.columns[0])]
        if not kinds:
            counts.without_seg += 1
            continue
        for kind in kinds:
            if not is_pending(row, dest, kind):
                counts.already += 1
                continue
            if not row.study_uid and studies is None:
                studies = _legacy_studies(store)
            check()
            row = send_one(row, dest, out, kind, (studies or {}).get(row.volume_id, ""))
            rows[i], changed = row, True
            error = getattr(row, kind.columns[3])
            if error:
                counts.failed += 1
                if len(counts.errors) < MAX_ERRORS_SHOWN:
                    counts.errors.append((row.volume_id, error))
            else:
                counts.sent += 1
                counts.rtstructs_sent += kind == Kind.RTSTRUCT
    if changed:
        check()
        store.write_volumes(bucket, rows)
    return counts


def send_pending(out: str, buckets: int, dest: str, workers: int = 4,
                 progress: Callable[[SendCounts], None] | None = None, check: Check = _no_check) -> SendCounts:
    """Every pending object of an output, `workers` parts at a time (each one request at a time: at
    most `workers` requests in flight at the server). The first part that raises (LeaseLost, a
    storage error) stops the rest: parts not started are cancelled, and the error is raised here."""
    total = SendCounts()
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for counts in pool.map(lambda b: send_part(out, b, dest, check), range(buckets)):
            total.add(counts)
            if progress is not None:
                progress(total)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return total
