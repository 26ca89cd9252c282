"""The header scan of one listed object: what it is and where it goes, never raising.

    scan_object(entry)           -> rows of a stored object: a DICOM header, a NIfTI file's
                                    geometry, a zip's members
    scan_dicomweb(entries)       -> rows of instances of one DICOMweb series, from WADO-RS
                                    metadata (one request for the series), pixels never fetched
"""
from __future__ import annotations

from types import SimpleNamespace

from pydicom.datadict import tag_for_keyword

from unet_core.config import Limits
from unet_core.errors import EmptyFileError, ErrorType, ItemFailure, StorageError, UnreadableFileError
from unet_core.io import archive, dicomweb, listing, storage
from unet_core.io.dicom.fastscan import FIELDS, Fields
from unet_core.io.dicom.header import header_from_dataset, scan_header
from unet_core.io.dicom.parse import HEADER_PREFIX_BYTES
from unet_core.io.nifti import NIFTI_HEADER_PREFIX, is_nifti_name, nifti_geometry
from unet_core.segmentation.records import Format, ObjectKind, ObjectRow
from unet_core.segmentation.selection import SelectionRules


def _row(entry: listing.ObjectEntry, **kw) -> ObjectRow:
    return ObjectRow(uri=kw.pop("uri", entry.uri), object_uri=entry.uri, object_size=entry.size,
                     object_version=entry.version, size=kw.pop("size", entry.size), **kw)


def _error_row(entry: listing.ObjectEntry, fmt: Format, exc: Exception, uri: str | None = None) -> ObjectRow:
    failure = ItemFailure.of(uri or entry.uri, exc, "reading the header")
    reason, error_type = failure.error, failure.error_type
    return _row(entry, uri=uri or entry.uri, format=fmt, kind=ObjectKind.ERROR, reason=reason, error_type=error_type)


def _dicom_row(entry: listing.ObjectEntry, uri: str, size: int, data: bytes | None, limits: Limits,
               rules: SelectionRules) -> ObjectRow:
    if data is None:
        data = storage.read_range(uri, 0, HEADER_PREFIX_BYTES) if size > HEADER_PREFIX_BYTES else storage.read_bytes(uri)
    h = scan_header(data, uri, size, limits.max_decompressed_bytes)
    if h is None:  # the header runs past the prefix
        h = scan_header(storage.read_bytes(uri, max_bytes=limits.max_file_bytes), uri,
                        max_inflated=limits.max_decompressed_bytes)
    # The free-text rules are decided here, where the text is read; only the result is kept.
    h.description_match, h.kernel_match = rules.text_matches(getattr(h, "texts", {}))
    h.text_rules = rules.text_digest()
    return ObjectRow.from_row({**h.row(), "object_uri": entry.uri, "object_size": entry.size,
                               "object_version": entry.version, "format": Format.DICOM.value})


def _nifti_row(entry: listing.ObjectEntry, uri: str, size: int, data: bytes | None, limits: Limits,
               rules: SelectionRules) -> ObjectRow:
    """A NIfTI file with the geometry its header gives (for the selection rules); its header is
    read again, whole, on decode."""
    if data is None:
        data = storage.read_range(uri, 0, NIFTI_HEADER_PREFIX)
    geometry = nifti_geometry(data[:NIFTI_HEADER_PREFIX], uri, limits) or {}
    return _row(entry, uri=uri, size=size, format=Format.NIFTI, text_rules=rules.text_digest(), **geometry)


def scan_object(entry: listing.ObjectEntry, limits: Limits, rules: SelectionRules | None = None) -> list[ObjectRow]:
    """The rows of one listed object: a NIfTI file's geometry, a DICOM object's header, a zip's
    members. Never raises: whatever goes wrong becomes an error row."""
    rules = rules or SelectionRules()
    if entry.skip:
        return [_row(entry, format=Format.DICOM, kind=ObjectKind.NON_IMAGE, reason=f"{entry.uri}: {entry.skip}",
                     error_type=ErrorType.NOT_READ)]
    row = _nifti_row if is_nifti_name(entry.uri) else _dicom_row
    if not archive.is_zip_name(entry.uri):
        try:
            return [row(entry, entry.uri, entry.size, None, limits, rules)]
        except Exception as exc:  # noqa: BLE001 - one object never stops the scan
            return [_error_row(entry, Format.NIFTI if row is _nifti_row else Format.DICOM, exc)]
    try:
        zipped = archive.Archive.open(entry.uri, limits)  # opened once; on S3, ranged reads
    except Exception as exc:  # noqa: BLE001
        return [_error_row(entry, Format.ZIP, exc)]
    with zipped:
        return _scan_members(entry, zipped, limits, rules)


def _scan_members(entry: listing.ObjectEntry, zipped: archive.Archive, limits: Limits,
                  rules: SelectionRules) -> list[ObjectRow]:
    try:
        members = zipped.members()
        if not members:
            raise EmptyFileError(f"{entry.uri}: the zip archive holds no files", uri=entry.uri)
    except Exception as exc:  # noqa: BLE001
        return [_error_row(entry, Format.ZIP, exc)]
    rows = []
    for m in members:
        if m.error:
            rows.append(_row(entry, uri=m.uri, size=m.size, format=Format.DICOM, kind=ObjectKind.ERROR, reason=m.error,
                             error_type=m.error_type))
            continue
        try:
            member = zipped.read(m.name)
            row = _nifti_row if is_nifti_name(m.uri) else _dicom_row
            rows.append(row(entry, m.uri, len(member), member, limits, rules))
        except Exception as exc:  # noqa: BLE001
            rows.append(_error_row(entry, Format.DICOM, exc, uri=m.uri))
    return rows


# ---- DICOMweb ---------------------------------------------------------------------------------------
PIXEL_TAGS = ("7FE00010", "7FE00008", "7FE00009")  # PixelData, FloatPixelData, DoubleFloatPixelData
_BULK = ("BulkDataURI", "InlineBinary")


# The attributes a header scan reads (the fast scan's, and an enhanced object's functional groups):
# the rest of an instance's metadata (patient module, bulk data, ...) never becomes a Dataset here.
HEADER_TAGS = frozenset(f"{tag_for_keyword(k):08X}" for k in (
    *FIELDS, "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"))


_FIELD_TAGS = {f"{tag_for_keyword(k):08X}": (k, vr, multi) for k, (vr, multi) in FIELDS.items()}
_SEQUENCES = {f"{tag_for_keyword(k):08X}" for k in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence")}


def _json_text(v) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return repr(v) if isinstance(v, float) else str(v)
    return None


def _fields_of(meta: dict):
    """The fast scan's Fields from DICOM JSON (values as pydicom gives them: strings, lists of
    strings, ints for US), about 10x quicker than pydicom's `from_json`; None for an enhanced
    object (functional groups) or a value of another shape: pydicom reads those."""
    if any(t in meta for t in _SEQUENCES):
        return None
    values = {}
    for tag, element in meta.items():
        field = _FIELD_TAGS.get(tag.upper())
        if field is None or not isinstance(element, dict) or not element.get("Value"):
            continue
        keyword, vr, multi = field
        raw = element["Value"]
        if not isinstance(raw, list):
            return None
        if vr == "US":
            if not isinstance(raw[0], int) or isinstance(raw[0], bool):
                return None
            values[keyword] = raw[0]
            continue
        texts = [_json_text(v) for v in raw]
        if any(t is None for t in texts):
            return None
        values[keyword] = texts if multi else texts[0]
    return Fields(values=values, file_meta=SimpleNamespace(TransferSyntaxUID=""), encapsulated=False)


def _dataset_of(meta: dict, uri: str):
    """The attributes of an instance's DICOM JSON that the scan reads, as a Dataset."""
    import pydicom

    fields = _fields_of(meta)
    if fields is not None:
        return fields

    kept = {tag: e for tag, e in meta.items()
            if tag.upper() in HEADER_TAGS and not (isinstance(e, dict) and any(k in e for k in _BULK))}
    try:
        return pydicom.Dataset.from_json(kept)
    except Exception as exc:  # the server's JSON is input: name the object, not the value
        raise UnreadableFileError(f"{uri}: the server's metadata of this instance cannot be read "
                                  f"({type(exc).__name__})", uri=uri) from exc


def _estimated_size(ds) -> int:
    """The pixel bytes the header declares: the size a WADO-RS answer will have, near enough for
    the budgets and the estimates (the server does not say before it sends)."""
    try:
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        return int(ds.Rows) * int(ds.Columns) * frames * int(getattr(ds, "SamplesPerPixel", 1) or 1) * \
            max(int(getattr(ds, "BitsAllocated", 16) or 16) // 8, 1)
    except (AttributeError, TypeError, ValueError):
        return 0


def _web_row(entry: listing.ObjectEntry, meta: dict, rules: SelectionRules) -> ObjectRow:
    ds = _dataset_of(meta, entry.uri)
    has_pixels = any(tag in meta for tag in PIXEL_TAGS)
    h = header_from_dataset(ds, entry.uri, _estimated_size(ds), has_pixels)
    h.description_match, h.kernel_match = rules.text_matches(getattr(h, "texts", {}))
    h.text_rules = rules.text_digest()
    return ObjectRow.from_row({**h.row(), "object_uri": entry.uri, "object_size": entry.size,
                               "object_version": entry.version, "format": Format.DICOM.value})


def scan_dicomweb(entries: list[listing.ObjectEntry], rules: SelectionRules | None = None) -> list[ObjectRow]:
    """The rows of instances of one series: the series' metadata in one request (one instance's
    when only one is new). An instance the metadata lacks (removed since the listing) is a
    `storage` row, scanned again next run. Never raises."""
    rules = rules or SelectionRules()
    first = dicomweb.parse(entries[0].uri)
    series = dicomweb.Ref(first.root, first.study, first.series)
    try:
        metas = dicomweb.series_metadata(series, only=first.instance if len(entries) == 1 else "")
    except Exception as exc:  # noqa: BLE001 - one series never stops the scan
        return [_error_row(e, Format.DICOM, exc) for e in entries]
    by_uid = {}
    for m in metas:
        value = (m.get("00080018") or {}).get("Value") if isinstance(m, dict) else None
        if value:
            by_uid[str(value[0])] = m
    rows = []
    for e in entries:
        meta = by_uid.get(dicomweb.parse(e.uri).instance)
        try:
            if meta is None:
                raise StorageError(f"{e.uri}: listed by QIDO-RS but absent from its series' metadata (removed since?)",
                                   uri=e.uri)
            rows.append(_web_row(e, meta, rules))
        except Exception as exc:  # noqa: BLE001
            rows.append(_error_row(e, Format.DICOM, exc))
    return rows
