"""What `unet send` may deliver to a PACS: only the objects this tool wrote for a volume.

A volume's row names a file to send (`seg_uri`, later an RT Structure Set's), and that table part
is editable by anyone who can write the output. Before a file goes to the clinical PACS under the
service account's credentials, two pure checks say it is the object the row means:

    deliverable_folder(output, file_uri)   -> "seg" or "rtstruct": the file lies under
                                              `<output>/seg/` or `<output>/rtstruct/`, however it
                                              is spelt (`..`, `%2e%2e`, symbolic links, another
                                              bucket or scheme are refused)
    check_outgoing(data, expected, uri)    -> the parsed dataset, when its SOP Class is one this
                                              tool writes (that folder's), its SOP Instance UID is
                                              the deterministic one of the row, and its study and
                                              referenced source series are the row's

Both raise `OutgoingObjectError` (an input error of that volume's row: its `send_error`), naming
the file and what did not match, never a header value that could identify a patient.
`outgoing(output, file_uri, data, expected)` runs both; `seg_instance_uid(volume_id, fingerprint,
model_identity)` is the SOP Instance UID the row's SEG must have (the rule of seg.py, not a copy),
`rtstruct_instance_uid(...)` its RTSTRUCT's (rtstruct.py's rule).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from io import BytesIO
from urllib.parse import unquote

from unet_core.errors import OutgoingObjectError
from unet_core.io import storage

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"  # RT Structure Set Storage
FOLDER_CLASSES = {"seg": frozenset({SEG_SOP_CLASS}), "rtstruct": frozenset({RTSTRUCT_SOP_CLASS})}
CLASS_NAMES = {SEG_SOP_CLASS: "Segmentation", RTSTRUCT_SOP_CLASS: "RT Structure Set"}


@dataclass(frozen=True)
class Expected:
    """What a volume's row says the object to send is."""

    sop_instance_uid: str  # the deterministic UID the tool gave it (unet_core.io.dicom.seg)
    study_instance_uid: str  # the source's study: a SEG or RTSTRUCT joins it
    source_series_uid: str  # the series it was made from: the only series it references
    sop_classes: frozenset[str] = field(default_factory=lambda: FOLDER_CLASSES["seg"] | FOLDER_CLASSES["rtstruct"])


def seg_instance_uid(volume_id: str, fingerprint: str, model_identity: str) -> str:
    """The deterministic SOP Instance UID `build_seg` gives a volume's SEG (from its row's fields)."""
    from unet_core.io.dicom import seg

    return seg._uid(volume_id, fingerprint, model_identity, "instance")  # the one rule, reused


def rtstruct_instance_uid(volume_id: str, fingerprint: str, model_identity: str) -> str:
    """The deterministic SOP Instance UID `build_rtstruct` gives a volume's RT Structure Set."""
    from unet_core.io.dicom import rtstruct

    return rtstruct._uid(volume_id, fingerprint, model_identity, rtstruct.NAMESPACE, "instance")


def _refuse(uri: str, why: str) -> OutgoingObjectError:
    return OutgoingObjectError(f"{uri}: not sent: {why}", uri=uri)


def _s3_segments(key: str, uri: str) -> list[str]:
    """A key's segments, refused when any is empty, "." or ".." as written or once decoded."""
    segments = key.split("/")
    for segment in segments:
        decoded = unquote(unquote(segment))
        if segment in ("", ".", "..") or decoded in ("", ".", "..") or "/" in decoded:
            raise _refuse(uri, "the key holds an empty, '.' or '..' segment (plain or percent-encoded)")
    return segments


def deliverable_folder(output: str, file_uri: str) -> str:
    """"seg" or "rtstruct": the folder of `output` that `file_uri` lies in. Raises
    OutgoingObjectError when it lies anywhere else (see the module docstring)."""
    if storage.is_s3(output) != storage.is_s3(file_uri) or storage.is_remote(file_uri) and not storage.is_s3(file_uri):
        raise _refuse(file_uri, f"it is not a file of the output {output}")
    if storage.is_s3(output):
        out_bucket, _, out_key = output[len("s3://"):].rstrip("/").partition("/")
        bucket, _, key = file_uri[len("s3://"):].partition("/")
        if bucket != out_bucket:
            raise _refuse(file_uri, f"it is in another bucket than the output {output}")
        segments = _s3_segments(key, file_uri)
        base = _s3_segments(out_key, output) if out_key else []
        if segments[:len(base)] == base and len(segments) > len(base) + 1 and segments[len(base)] in FOLDER_CLASSES:
            return segments[len(base)]
        raise _refuse(file_uri, f"it does not lie under {output}/seg/ or {output}/rtstruct/")
    _, out_path = storage.resolve(output)
    _, path = storage.resolve(file_uri)
    out_real = os.path.realpath(out_path)
    real = os.path.realpath(path)  # every link on the way resolved, '..' with them
    for name in FOLDER_CLASSES:
        folder = os.path.join(out_real, name)
        if real.startswith(folder + os.sep):
            if os.path.islink(folder):
                raise _refuse(file_uri, f"the output's {name}/ folder is a symbolic link")
            return name
    raise _refuse(file_uri, f"it does not lie under {output}/seg/ or {output}/rtstruct/ (links and '..' "
                            "resolved)")


def _referenced_series(ds) -> set[str]:
    """The series a SEG (ReferencedSeriesSequence) or an RT Structure Set (through
    ReferencedFrameOfReferenceSequence > RTReferencedStudySequence > RTReferencedSeriesSequence)
    references."""
    found = {str(item.get("SeriesInstanceUID", "")).strip() for item in ds.get("ReferencedSeriesSequence", [])}
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            found |= {str(s.get("SeriesInstanceUID", "")).strip() for s in study.get("RTReferencedSeriesSequence", [])}
    return found - {""}


def check_outgoing(data: bytes, expected: Expected, uri: str):
    """The dataset of `data` (pydicom), when it is the object `expected` describes; else
    OutgoingObjectError naming what differs."""
    import pydicom

    try:
        ds = pydicom.dcmread(BytesIO(data))
        sop_class = str(ds.get("SOPClassUID", "")).strip()
        sop_instance = str(ds.get("SOPInstanceUID", "")).strip()
        meta = ds.get("file_meta") or pydicom.Dataset()
        meta_class = str(meta.get("MediaStorageSOPClassUID", sop_class)).strip()
        meta_instance = str(meta.get("MediaStorageSOPInstanceUID", sop_instance)).strip()
        study = str(ds.get("StudyInstanceUID", "")).strip()
        referenced = _referenced_series(ds)
    except Exception as exc:  # noqa: BLE001 - any reader failure: not an object to send
        raise _refuse(uri, f"it cannot be read as DICOM ({type(exc).__name__})") from None
    if sop_class not in expected.sop_classes:
        name = CLASS_NAMES.get(sop_class) or pydicom.uid.UID(sop_class).name if sop_class else "none"
        allowed = ", ".join(sorted(CLASS_NAMES.get(c, c) for c in expected.sop_classes))
        raise _refuse(uri, f"its SOP Class is {name}, not one this tool writes there ({allowed})")
    if (meta_class, meta_instance) != (sop_class, sop_instance):
        raise _refuse(uri, "its file meta names another SOP Class or Instance than its dataset")
    if sop_instance != expected.sop_instance_uid:
        raise _refuse(uri, f"its SOP Instance UID is not {expected.sop_instance_uid}, the one this tool gave the "
                           "volume's object")
    if study != expected.study_instance_uid:
        raise _refuse(uri, "it belongs to another study than the volume's source")
    if referenced != {expected.source_series_uid}:
        raise _refuse(uri, f"it references {len(referenced)} series, not only the volume's source series "
                           f"{expected.source_series_uid}")
    return ds


def outgoing(output: str, file_uri: str, data: bytes, expected: Expected):
    """Both checks: the file lies in the output's folder of its kind, and is the row's object."""
    folder = deliverable_folder(output, file_uri)
    allowed = expected.sop_classes & FOLDER_CLASSES[folder]
    return check_outgoing(data, Expected(expected.sop_instance_uid, expected.study_instance_uid,
                                         expected.source_series_uid, allowed), file_uri)
