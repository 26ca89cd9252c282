"""Delivering DICOM SEGs to a PACS over DICOMweb (STOW-RS), once each, resumably.

    send_record(rec, dest)            -> the record with `sent` (and `sent_to`) or `send_error`
    send_pending(out, dest, workers)  -> every ok volume of an output whose SEG is not stored at
                                         `dest` yet: stored, and its table row updated

A SEG's UIDs are a function of its volume, its inputs' fingerprint and the model
(unet_core.io.dicom.seg), so sending it again stores the same instance: the server keeps one copy.
A volume redone because its inputs changed has a new SEG, sent once. Table parts are rewritten
whole (write then publish), one part at a time; the output's lease keeps other writers out.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable

from unet_core.errors import ItemFailure, StorageError
from unet_core.io import dicomweb, storage
from unet_core.segmentation.records import RowKind, Status, VolumeRecord
from unet_core.segmentation.store import OutputStore

MAX_ERRORS_SHOWN = 10


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def send_record(rec: VolumeRecord, dest: str, data: bytes | None = None) -> VolumeRecord:
    """Store `rec`'s SEG at `dest` (its bytes, or read from `seg_uri`); never raises."""
    try:
        dicomweb.store(dest, data if data is not None else storage.read_bytes(rec.seg_uri))
        return replace(rec, sent=_now(), sent_to=dest, send_error="")
    except Exception as exc:  # noqa: BLE001 - one SEG, not the job: its row says why
        failure = ItemFailure.of(rec.seg_uri, exc, "sending the SEG")
        error = failure.error if isinstance(exc, StorageError) else f"{rec.seg_uri}: not stored at {dest}: " \
            + failure.error
        return replace(rec, sent="", sent_to="", send_error=error)


def is_pending(rec: VolumeRecord, dest: str) -> bool:
    """An ok row with a SEG that is not stored at `dest`."""
    return rec.status == Status.OK and bool(rec.seg_uri) and not (rec.sent and rec.sent_to == dest)


@dataclass
class SendCounts:
    sent: int = 0  # stored now
    failed: int = 0  # tried now and refused or failed (send_error)
    already: int = 0  # stored at this destination before
    without_seg: int = 0  # ok volumes with no SEG (NIfTI inputs, or made without --dicom-seg)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (volume id, send_error), a few

    def add(self, other: "SendCounts") -> None:
        self.sent, self.failed = self.sent + other.sent, self.failed + other.failed
        self.already, self.without_seg = self.already + other.already, self.without_seg + other.without_seg
        self.errors = (self.errors + other.errors)[:MAX_ERRORS_SHOWN]


def send_part(out: str, bucket: int, dest: str) -> SendCounts:
    """Send the pending SEGs of one volume-table part; the part is rewritten when any row changed."""
    store = OutputStore(out)
    rows, counts, changed = store.read_volumes(bucket), SendCounts(), False
    for i, row in enumerate(rows):
        if row.status != Status.OK or row.kind != RowKind.VOLUME:
            continue
        if not row.seg_uri:
            counts.without_seg += 1
        elif not is_pending(row, dest):
            counts.already += 1
        else:
            rec = send_record(row, dest)
            rows[i], changed = rec, True
            if rec.send_error:
                counts.failed += 1
                if len(counts.errors) < MAX_ERRORS_SHOWN:
                    counts.errors.append((rec.volume_id, rec.send_error))
            else:
                counts.sent += 1
    if changed:
        store.write_volumes(bucket, rows)
    return counts


def send_pending(out: str, buckets: int, dest: str, workers: int = 4,
                 progress: Callable[[SendCounts], None] | None = None) -> SendCounts:
    """Every pending SEG of an output, `workers` parts at a time (each one request at a time: at
    most `workers` requests in flight at the server)."""
    total = SendCounts()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for counts in pool.map(lambda b: send_part(out, b, dest), range(buckets)):
            total.add(counts)
            if progress is not None:
                progress(total)
    return total
