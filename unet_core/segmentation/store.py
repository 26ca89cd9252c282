"""The output of a segment run, as one store: the only module that composes a path under an
output. It reads and writes typed records (records.py), never loose rows.

    <output>/layout.json                          Layout: partitions, buckets, fan-out depth, inputs
    <output>/series_index/part-PPPPP.parquet      ObjectRow of every object of listing partition P:
                                                  the manifest a re-run joins its listing against
    <output>/volumes/part-BBBBB.parquet           VolumeRecord of every volume of bucket B: the table
    <output>/plan/part-BBBBB.parquet              PlannedVolume of a bucket with volumes to segment,
                                                  while a run is under way (gone once its part is written)
    <output>/records/ok|error/<volume_id>.parquet completion records, the unit of exactly-once
    <output>/masks|slices|qc|seg|rtstruct/<volume_id>.*  per-volume outputs (VolumeOutput)
    <output>/summary.json, plan.parquet, report.html, report/*.png

Rows written by an earlier layout version are brought to this one as they are read
(`VolumeRecord.from_stored`), so status, the report and a re-run read an older output as it is.
"""
from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

from unet_core.errors import NotFoundError
from unet_core.io import storage
from unet_core.io.lease import Fence
from unet_core.segmentation.layout import LAYOUT_VERSION, READABLE_VERSIONS, Layout
from unet_core.segmentation.records import (
    Action,
    ObjectRow,
    PlannedVolume,
    Status,
    VolumeRecord,
    arrow_bytes,
    rows_from_bytes,
    table_bytes,
)

LAYOUT_FILE = "layout.json"
SUMMARY_FILE = "summary.json"
PLAN_TABLE = "plan.parquet"
REPORT_FILE = "report.html"
EVALUATION_TABLE = "evaluation.parquet"  # unet evaluate's, by default
PLOTS_FOLDER = "report"
RUN_ID_KEY = b"unet_run_id"  # a completion record's Parquet metadata: the run that wrote it


class Folder(enum.StrEnum):
    """The folders of an output, each written by this tool only."""

    SERIES_INDEX = "series_index"
    VOLUMES = "volumes"
    PLAN = "plan"
    RECORDS = "records"
    MASKS = "masks"
    SLICES = "slices"
    QC = "qc"
    SEG = "seg"
    RTSTRUCT = "rtstruct"


class VolumeOutput(enum.Enum):
    """A per-volume output: (its folder, its file suffix)."""

    MASK = (Folder.MASKS, ".nii.gz")
    SLICES = (Folder.SLICES, ".parquet")
    QC = (Folder.QC, ".png")
    SEG = (Folder.SEG, ".dcm")
    RTSTRUCT = (Folder.RTSTRUCT, ".dcm")


@dataclass(frozen=True)
class VolumePart:
    """A volume-table part as read: its rows, and whether it lacks a column of this layout."""

    rows: list[VolumeRecord]
    outdated: bool


def _outdated(stored) -> bool:
    """Whether a volume-table part's schema is an earlier layout's: it lacks a column of this one,
    or holds one as another type (JSON text where this one has a struct). Such a part is rewritten
    when a run passes it, even unchanged."""
    for f in VolumeRecord.arrow_schema():
        i = stored.get_field_index(f.name)
        if i < 0 or not stored.field(i).type.equals(f.type):
            return True
    return False


def index_rows(data: bytes) -> list[ObjectRow]:
    """The rows of a series_index part's bytes (`OutputStore.read_index_bytes`)."""
    return [ObjectRow.from_row(r) for r in rows_from_bytes(data)]


@dataclass(frozen=True)
class OutputStore:
    """One output prefix (local or s3://, without a trailing "/"). With a `fence` (the run's lease
    token), every write and delete first checks that the run still holds the output's lease: one
    that lost it raises LeaseLost and changes nothing."""

    root: str
    fence: Fence | None = field(default=None, compare=False)

    def check_lease(self) -> None:
        """Raises LeaseLost once the output's lease is not this run's (no fence: nothing to check)."""
        if self.fence is not None:
            self.fence.check()

    def uri(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    def folder(self, folder: Folder) -> str:
        return self.uri(folder.value)

    # ---- layout ------------------------------------------------------------------------------------
    @property
    def layout_uri(self) -> str:
        return self.uri(LAYOUT_FILE)

    def read_layout(self) -> Layout | None:
        """The last run's layout, when this version can reuse it (None: none, or too old)."""
        if not storage.exists(self.layout_uri):
            return None
        layout = Layout.from_json(storage.read_bytes(self.layout_uri).decode())
        return layout if layout.version in READABLE_VERSIONS else None

    def write_layout(self, layout: Layout) -> None:
        self.check_lease()
        storage.write_bytes(self.layout_uri, layout.to_json().encode())

    def upgrade_layout(self, layout: Layout) -> Layout:
        """A reused layout of an earlier version, stated as this one: its partitioning is the same;
        its parts are brought up to date as they are read (and rewritten as they change)."""
        if layout.version == LAYOUT_VERSION:
            return layout
        new = Layout(layout.inputs, layout.depth, layout.partitions, layout.buckets)
        self.write_layout(new)
        return new

    # ---- series index (per listing partition) ------------------------------------------------------
    def index_part_uri(self, partition: int) -> str:
        return self.uri(Folder.SERIES_INDEX.value, f"part-{partition:05d}.parquet")

    def read_index(self, partition: int) -> list[ObjectRow]:
        """The last run's rows of one listing partition ([] when there is none)."""
        data = self.read_index_bytes(partition)
        return [] if data is None else index_rows(data)

    def read_index_bytes(self, partition: int) -> bytes | None:
        """One listing partition's series_index part as stored (None when there is none): a re-run
        reads the few columns its join needs from it, and its rows only when something changed."""
        try:
            return storage.read_bytes(self.index_part_uri(partition))
        except NotFoundError:
            return None

    def write_index(self, partition: int, rows: list[ObjectRow]) -> None:
        self.check_lease()
        storage.write_bytes(self.index_part_uri(partition), table_bytes(ObjectRow, [r.to_row() for r in rows]))

    def delete_index(self, partition: int) -> None:
        self.check_lease()
        storage.delete(self.index_part_uri(partition))

    # ---- the volume table (per bucket) -------------------------------------------------------------
    def volume_part_uri(self, bucket: int) -> str:
        return self.uri(Folder.VOLUMES.value, f"part-{bucket:05d}.parquet")

    def read_volumes(self, bucket: int) -> list[VolumeRecord]:
        """The last run's rows of one volume-table part ([] when there is none)."""
        return self.read_volume_part(bucket).rows

    def read_volume_part(self, bucket: int) -> VolumePart:
        """One volume-table part's rows and whether an earlier layout wrote it, from one read (a
        re-run's planning reads each part once)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            data = storage.read_bytes(self.volume_part_uri(bucket))
        except NotFoundError:
            return VolumePart([], False)
        table = pq.ParquetFile(pa.BufferReader(data)).read()
        return VolumePart([VolumeRecord.from_stored(r) for r in table.to_pylist()], _outdated(table.schema))

    def write_volumes(self, bucket: int, records: list[VolumeRecord]) -> None:
        """One volume-table part, whole (write, then publish)."""
        self.check_lease()
        storage.write_bytes(self.volume_part_uri(bucket), table_bytes(VolumeRecord, [r.to_row() for r in records]))

    def delete_volumes(self, bucket: int) -> None:
        self.check_lease()
        storage.delete(self.volume_part_uri(bucket))

    def volume_parts(self) -> Iterator[list[VolumeRecord]]:
        """The volume table part by part, in name order (nothing when there is no table)."""
        for uri in self._parts(Folder.VOLUMES):
            yield [VolumeRecord.from_stored(r) for r in rows_from_bytes(storage.read_bytes(uri))]

    def volume_table(self) -> list[VolumeRecord]:
        """Every row of the volume table: for tests, the demo and small outputs (large outputs are
        read part by part, or with any Parquet engine pointed at the folder)."""
        return [r for part in self.volume_parts() for r in part]

    def series_index(self) -> list[ObjectRow]:
        return [ObjectRow.from_row(r) for uri in self._parts(Folder.SERIES_INDEX)
                for r in rows_from_bytes(storage.read_bytes(uri))]

    def _parts(self, folder: Folder) -> list[str]:
        try:
            entries = storage.list_files(self.folder(folder))
        except NotFoundError:
            return []
        return sorted(e.uri for e in entries if e.uri.endswith(".parquet"))

    # ---- the plan of a run under way (per bucket) --------------------------------------------------
    def plan_part_uri(self, bucket: int) -> str:
        return self.uri(Folder.PLAN.value, f"part-{bucket:05d}.parquet")

    def has_plan(self, bucket: int) -> bool:
        return storage.exists(self.plan_part_uri(bucket))

    def read_plan(self, bucket: int, action: Action | None = None) -> list[PlannedVolume]:
        rows = rows_from_bytes(storage.read_bytes(self.plan_part_uri(bucket)))
        return [p for p in map(PlannedVolume.from_row, rows) if action is None or p.action == action]

    def write_plan(self, bucket: int, planned: list[PlannedVolume]) -> None:
        self.check_lease()
        storage.write_bytes(self.plan_part_uri(bucket), table_bytes(PlannedVolume, [p.to_row() for p in planned]))

    def read_plan_arrow(self, bucket: int):
        """One bucket's plan as an Arrow table in PlannedVolume's schema, its rows left as Arrow
        values (the run-wide choices rewrite a few rows of a plan: tables.demote_bucket)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.ParquetFile(pa.BufferReader(storage.read_bytes(self.plan_part_uri(bucket)))).read()
        return table.cast(PlannedVolume.arrow_schema())

    def write_plan_arrow(self, bucket: int, table) -> None:
        """A plan part from an Arrow table in PlannedVolume's schema (whole: write, then publish)."""
        self.check_lease()
        storage.write_bytes(self.plan_part_uri(bucket), arrow_bytes(table))

    def delete_plan(self, bucket: int) -> None:
        self.check_lease()
        storage.delete(self.plan_part_uri(bucket))

    # ---- completion records (per volume) -----------------------------------------------------------
    def records_folder(self, status: Status) -> str:
        return self.uri(Folder.RECORDS.value, status.value)

    def record_uri(self, status: Status, volume_id: str) -> str:
        return self.uri(Folder.RECORDS.value, status.value, f"{volume_id}.parquet")

    def write_record(self, rec: VolumeRecord, run_id: str = "") -> None:
        """Publish a volume's completion record (naming the run that wrote it, in the file's metadata);
        an ok record replaces an earlier error record."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.check_lease()
        status = Status.OK if rec.status == Status.OK else Status.ERROR
        schema = VolumeRecord.arrow_schema().with_metadata({RUN_ID_KEY: run_id.encode()})
        buf = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist([rec.to_row()], schema=schema), buf, compression="zstd")
        storage.write_bytes(self.record_uri(status, rec.volume_id), buf.getvalue().to_pybytes())
        if status == Status.OK:
            storage.delete(self.record_uri(Status.ERROR, rec.volume_id))

    def read_record(self, volume_id: str, fingerprint: str, ok_only: bool = False) -> VolumeRecord | None:
        """This fingerprint's completion record of a volume (ok first, then error), if there is one."""
        found = self.find_record(volume_id, fingerprint, ok_only)
        return found[0] if found is not None else None

    def find_record(self, volume_id: str, fingerprint: str,
                    ok_only: bool = False) -> tuple[VolumeRecord, str] | None:
        """(record, the id of the run that wrote it ("" for a record of an older version)), or None."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        for status in (Status.OK,) if ok_only else (Status.OK, Status.ERROR):
            try:
                data = storage.read_bytes(self.record_uri(status, volume_id))
            except NotFoundError:
                continue
            part = pq.ParquetFile(pa.BufferReader(data))
            rec = VolumeRecord.from_stored(part.read().to_pylist()[0])
            if rec.fingerprint == fingerprint:
                return rec, (part.schema_arrow.metadata or {}).get(RUN_ID_KEY, b"").decode()
        return None

    # ---- per-volume outputs ------------------------------------------------------------------------
    def output_uri(self, kind: VolumeOutput, volume_id: str) -> str:
        folder, suffix = kind.value
        return self.uri(folder.value, f"{volume_id}{suffix}")

    def relative(self, uri: str) -> str:
        """A link from a page at the output's root to one of its objects."""
        prefix = self.root.rstrip("/") + "/"
        return uri[len(prefix):] if uri.startswith(prefix) else uri

    # ---- run-wide files ----------------------------------------------------------------------------
    @property
    def summary_uri(self) -> str:
        return self.uri(SUMMARY_FILE)

    @property
    def plan_table_uri(self) -> str:
        return self.uri(PLAN_TABLE)

    @property
    def evaluation_uri(self) -> str:
        return self.uri(EVALUATION_TABLE)

    @property
    def report_uri(self) -> str:
        return self.uri(REPORT_FILE)

    def plot_uri(self, name: str) -> str:
        return self.uri(PLOTS_FOLDER, name)

    def has_file(self, name: str) -> bool:
        """Whether a run-wide file (summary.json, layout.json, plan.parquet) exists."""
        return storage.exists(self.uri(name))

    def has_folder(self, folder: Folder) -> bool:
        """Whether a folder of the output holds anything."""
        try:
            return any(True for _ in storage.list_files(self.folder(folder)))
        except NotFoundError:
            return False
