"""Rows that cross a stage of the segment pipeline, as dataclasses with one `to_row`/`from_row`
and a Parquet schema derived from their fields in one place (`arrow_schema`).

    ObjectRow     one stored object (or zip member): listing facts + header; a row of series_index
    Fragment      part of one volume found in one listing partition; merged across partitions
    PlannedVolume one volume (or one object set aside) after planning: what to do with it
    VolumeRecord  one row of the volume table; also the per-volume completion record
"""
from __future__ import annotations

import dataclasses
import enum
import io
import types
import typing
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from unet_core.errors import ErrorType
from unet_core.io.dicom.header import DicomHeader, ObjectKind
from unet_core.segmentation.selection import Rule, VolumeFacts, rule_of

R = TypeVar("R", bound="Record")
SET_ASIDE_PREFIX = "obj-"  # the id of an object set aside: "obj-" + a hash of its URI (never read back)


class Status(enum.StrEnum):
    OK = "ok"
    ERROR = "error"
    SKIPPED = "skipped"  # an object that is not an image to segment (a report, a duplicate copy, ...)


class Action(enum.StrEnum):
    SEGMENT = "segment"  # new or changed: decode, predict, write
    CARRY = "carry"  # complete and unchanged since the last run: its row is carried over
    SET_ASIDE = "set_aside"  # an object that forms no volume: its row is written, nothing else


class RowKind(enum.StrEnum):
    """What a row of the volume table stands for."""

    VOLUME = "volume"  # a volume: segmented, carried, failed or not selected
    SET_ASIDE = "set_aside"  # an object that forms no volume (a report, a duplicate, junk): id "obj-..."


class Format(enum.StrEnum):
    DICOM = "dicom"
    NIFTI = "nifti"
    ZIP = "zip"


def _optional_inner(hint: Any) -> Any | None:
    """X of `X | None` (None: not an optional hint)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner
    return None


def _items_of(hint: Any) -> Any | None:
    """X of `tuple[X, ...]`, `tuple[X, X]` or `list[X]` (None: not a sequence hint)."""
    if typing.get_origin(hint) in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return args[0] if args else float
    return None


def _arrow_type(hint: Any):
    """The Arrow type of a field's hint: scalars as themselves, enums as their string value,
    sequences as lists, a Counter as map<string, int64>, a dataclass as a struct of its fields."""
    import pyarrow as pa

    if (inner := _optional_inner(hint)) is not None:
        return _arrow_type(inner)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return pa.string()
    if (item := _items_of(hint)) is not None:
        return pa.list_(_arrow_type(item))
    if hint is Counter or typing.get_origin(hint) is Counter:
        return pa.map_(pa.string(), pa.int64())
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return pa.struct([pa.field(f.name, _arrow_type(hints[f.name])) for f in dataclasses.fields(hint)])
    return {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}[hint]


def _converter(hint: Any):
    """How a Parquet / Arrow value (`to_pylist`'s) becomes the field's Python value (None: as it is).
    A value that already has the field's type is kept."""
    if (inner := _optional_inner(hint)) is not None:
        convert = _converter(inner)
        return None if convert is None else (lambda v: None if v is None else convert(v))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint
    if (item := _items_of(hint)) is not None:
        each = _converter(item)
        if typing.get_origin(hint) is list:
            return None if each is None else (lambda v: [each(x) for x in v])
        return (lambda v: tuple(v)) if each is None else (lambda v: tuple(each(x) for x in v))
    if hint is Counter or typing.get_origin(hint) is Counter:
        return lambda v: Counter(dict(v))  # a map reads back as (key, value) pairs
    if dataclasses.is_dataclass(hint):
        build = hint.from_row if issubclass(hint, Record) else _builder(hint)
        return lambda v: v if isinstance(v, hint) else build(v)
    return None


def _builder(cls: type):
    """`from_row` for a dataclass that is not a Record (selection.VolumeFacts): its known fields
    converted, fields of another version left out."""
    hints = typing.get_type_hints(cls)
    converters = {f.name: _converter(hints[f.name]) for f in dataclasses.fields(cls)}

    def build(row: dict):
        kwargs = {}
        for name, value in row.items():
            if name in converters:
                convert = converters[name]
                kwargs[name] = value if convert is None or value is None else convert(value)
        return cls(**kwargs)

    return build


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain(v: Any) -> Any:
    """A field's value as Arrow takes it: enums as their value, tuples as lists, dataclasses as
    dicts of plain values. (Called for every field of every member row: scalars leave first.)"""
    if type(v) in _SCALARS:
        return v
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, Record):
        return v.to_row()
    if isinstance(v, (tuple, list)):
        return [x if type(x) in _SCALARS else _plain(x) for x in v]
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    return v


class Record:
    """Mixin: `to_row()` gives plain Python values (enums as their value, tuples as lists, nested
    records and dataclasses as dicts);
    `from_row()` rebuilds the dataclass and refuses unknown keys; `arrow_schema()` is the one
    Parquet schema of the type. Field facts are worked out once per class."""

    _schema: ClassVar[Any] = None
    _fields: ClassVar[dict[str, Any] | None] = None
    _converted: ClassVar[list | None] = None
    _row_spec: ClassVar[list | None] = None

    @classmethod
    def _field_converters(cls) -> dict[str, Any]:
        if cls.__dict__.get("_fields") is None:
            hints = typing.get_type_hints(cls)
            cls._fields = {f.name: _converter(hints[f.name]) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls._fields  # type: ignore[return-value]

    def to_row(self) -> dict:
        cls = type(self)
        if cls.__dict__.get("_row_spec") is None:  # (name, whether its value needs _plain), once per class
            cls._row_spec = [(n, c is not None) for n, c in cls._field_converters().items()]
        d = self.__dict__
        return {n: _plain(d[n]) if nested else d[n] for n, nested in cls._row_spec}

    @classmethod
    def from_row(cls: type[R], row: dict) -> R:
        fields = cls._field_converters()
        if cls.__dict__.get("_converted") is None:  # the fields that need a conversion, once per class
            cls._converted = [(n, c) for n, c in fields.items() if c is not None]
        if not row.keys() <= fields.keys():
            raise ValueError(f"{cls.__name__}: unknown fields {sorted(row.keys() - fields.keys())}")
        kwargs = dict(row)
        for name, convert in cls._converted:
            value = kwargs.get(name)
            if value is not None:
                kwargs[name] = convert(value)
        if len(kwargs) == len(fields) and not hasattr(cls, "__post_init__"):
            # Every field given (a row of this project's own tables): set them without the generated
            # __init__ (a third of the cost); only for records without a __post_init__.
            obj = cls.__new__(cls)
            obj.__dict__.update(kwargs)
            return obj
        return cls(**kwargs)  # type: ignore[call-arg]

    @classmethod
    def arrow_schema(cls):
        import pyarrow as pa

        if cls.__dict__.get("_schema") is None:
            hints = typing.get_type_hints(cls)
            fields = []
            for f in dataclasses.fields(cls):  # type: ignore[arg-type]
                fields.append(pa.field(f.name, _arrow_type(hints[f.name])))
            cls._schema = pa.schema(fields)
        return cls._schema


@dataclass
class ObjectRow(DicomHeader, Record):
    """One stored object or zip member: what its header scan learnt (a DicomHeader, so grouping
    takes it as it is), plus what was listed. `object_*` describe the listed object (a zip for its
    members); `object_version` is the ETag or mtime the change rule compares."""

    kind: ObjectKind = ObjectKind.IMAGE
    object_uri: str = ""
    object_size: int = 0
    object_version: str = ""
    format: Format = Format.DICOM
    volume_id: str = ""


@dataclass
class Fragment(Record):
    """The members of one volume (or one set-aside object) found in one listing partition.
    `members` are their ObjectRows (an Arrow list of structs), or None when every one of them was
    unchanged since the last run (then they are in the partition's series_index part, for the rare
    volume that needs them); `fingerprint` is their part of the volume's fingerprint; `bucket` routes the
    fragment to the merge task that also holds the volume's previous table row. The partition's
    scan counts ride on its first fragment (zeros on the others): every listed object forms at
    least one row, so a partition that listed anything has a first fragment."""

    volume_id: str
    bucket: int
    members: tuple[ObjectRow, ...] | None
    partition: int = 0
    fingerprint: str = ""
    listed: int = 0  # stored objects listed in the partition
    reused: int = 0  # their rows taken from the last run (unchanged)
    scanned: int = 0  # headers read now


@dataclass
class PlannedVolume(Record):
    volume_id: str
    bucket: int
    action: Action
    fingerprint: str
    format: Format
    source: str
    series_uid: str
    members: tuple[ObjectRow, ...] = ()  # in volume order (SEGMENT, and a volume's error found at planning)
    record: VolumeRecord | None = None  # its table row (CARRY, SET_ASIDE); None for SEGMENT
    facts: VolumeFacts | None = None  # what the selection rules decide on (None for objects set aside)
    kind: RowKind = RowKind.VOLUME


@dataclass
class VolumeRecord(Record):
    """One row of the volume table, and the per-volume completion record (written last)."""

    volume_id: str
    source: str
    format: Format
    series_uid: str
    status: Status
    study_uid: str = ""  # the source's study (from its headers): a SEG or RTSTRUCT sent must join it
    error: str = ""
    error_type: ErrorType = ErrorType.NONE
    fingerprint: str = ""
    n_objects: int = 0
    mask_uri: str = ""
    slices_uri: str = ""
    qc_uri: str = ""
    seg_uri: str = ""  # the DICOM SEG (--dicom-seg)
    seg_skipped: str = ""  # why a volume has no SEG although one was asked for
    rtstruct_uri: str = ""  # the DICOM RT Structure Set (--rtstruct)
    rtstruct_skipped: str = ""  # why a volume has no RTSTRUCT although one was asked for (or what it left out)
    n_slices: int = 0
    mask_voxels: int = 0
    mask_volume_ml: float = 0.0
    mean_hu_in_mask: float | None = None
    modality: str = ""
    model: str = ""
    model_identity: str = ""
    # A registered model (--model models:/NAME/VERSION): the registry, the version and the MLflow run.
    model_registry: str = ""
    model_version: str = ""
    model_run_id: str = ""
    decode_seconds: float = 0.0
    predict_seconds: float = 0.0
    model_seconds: float = 0.0
    write_seconds: float = 0.0
    attempts: int = 0
    metadata: str = "{}"
    finished: str = ""
    keep_phi: bool = False  # made with --keep-phi: its metadata may hold patient name, ID and birth date
    selection_facts: VolumeFacts | None = None  # what the selection rules are decided on (a struct column)
    text_rules: str = ""  # digest of the free-text patterns its facts' matches were made with
    sent: str = ""  # --send / unet send: when its SEG was stored at `sent_to` (UTC, ISO 8601)
    sent_to: str = ""  # the DICOMweb service it was stored at (never holds credentials)
    send_error: str = ""  # why the last attempt to store it failed; the next run or `unet send` retries
    rtstruct_sent: str = ""  # --send / unet send: when its RTSTRUCT was stored at `rtstruct_sent_to`
    rtstruct_sent_to: str = ""
    rtstruct_send_error: str = ""  # as send_error, for the RTSTRUCT
    kind: RowKind = RowKind.VOLUME
    rule: Rule = Rule.NONE  # what left a not_selected volume out

    @classmethod
    def from_stored(cls, row: dict) -> VolumeRecord:
        """A row of a stored table or record, of this layout version or an earlier one: columns
        it does not know are left out, missing ones take their defaults; a layout-3 row (no `kind`
        column) gets its kind from its id and its rule from its message; a row of layout 3 or 4 has
        its selection facts as JSON text."""
        fields = cls._field_converters()
        known = {k: v for k, v in row.items() if k in fields}
        facts = known.get("selection_facts")
        if isinstance(facts, str):
            known["selection_facts"] = VolumeFacts.from_json(facts) if facts else None
        if "kind" not in row:
            vid = str(row.get("volume_id") or "")
            known["kind"] = RowKind.SET_ASIDE if vid.startswith(SET_ASIDE_PREFIX) else RowKind.VOLUME
            if row.get("error_type") == ErrorType.NOT_SELECTED.value:
                known["rule"] = rule_of(str(row.get("error") or ""))
        return cls.from_row(known)

    @property
    def not_selected(self) -> bool:
        return self.error_type == ErrorType.NOT_SELECTED


def table_bytes(cls: type[Record], rows: list[dict]) -> bytes:
    """Parquet bytes (zstd) of rows of one record type, in its schema."""
    import pyarrow as pa

    return arrow_bytes(pa.Table.from_pylist(rows, schema=cls.arrow_schema()))


def arrow_bytes(table) -> bytes:
    """Parquet bytes (zstd) of an Arrow table (`table_bytes`'s writer, for rows kept as Arrow)."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def rows_from_bytes(data: bytes) -> list[dict]:
    """The rows of one Parquet object. Read with ParquetFile, not `pq.read_table`: that builds a
    dataset per call (about 7 ms, and it imports pandas), which a re-run paid once per part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.ParquetFile(pa.BufferReader(data)).read().to_pylist()


__all__ = ["Action", "ErrorType", "Format", "Fragment", "ObjectKind", "ObjectRow",
           "PlannedVolume", "Record", "RowKind", "Rule", "SET_ASIDE_PREFIX", "Status", "VolumeRecord",
           "arrow_bytes", "rows_from_bytes", "table_bytes"]
