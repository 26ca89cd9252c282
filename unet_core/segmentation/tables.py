"""The volume table, one part per bucket, from a bucket's planned volumes and the completion
records this run wrote; and the counts a job summary needs (never rows)."""
from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field

from unet_core.errors import ITEM_ERRORS, ErrorType
from unet_core.io import storage
from unet_core.segmentation import choosing, planning, selection
from unet_core.segmentation.layout import index_part_uri, plan_part_uri, volume_part_uri
from unet_core.segmentation.records import (
    Action,
    Fragment,
    ObjectRow,
    PlannedVolume,
    Status,
    VolumeRecord,
    rows_from_bytes,
    table_bytes,
)
from unet_core.segmentation.settings import SegmentSettings
from unet_core.segmentation.stages import read_record

MAX_FAILURES_SHOWN = 20


@dataclass
class TableCounts:
    """What a volume-table part adds to a job's summary."""

    by_status: Counter = field(default_factory=Counter)
    by_error_type: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (volume id, error), a few
    parts_written: int = 0
    not_selected: Counter = field(default_factory=Counter)  # volumes left out, by the rule that did

    def add(self, other: "TableCounts") -> None:
        self.by_status.update(other.by_status)
        self.by_error_type.update(other.by_error_type)
        self.failures = (self.failures + other.failures)[:MAX_FAILURES_SHOWN]
        self.parts_written += other.parts_written
        self.not_selected.update(other.not_selected)

    def to_json(self) -> str:
        return json.dumps({"by_status": self.by_status, "by_error_type": self.by_error_type,
                           "failures": self.failures, "parts_written": self.parts_written,
                           "not_selected": self.not_selected})

    @classmethod
    def from_json(cls, text: str) -> "TableCounts":
        d = json.loads(text)
        return cls(Counter(d["by_status"]), Counter(d["by_error_type"]), [tuple(x) for x in d["failures"]],
                   d["parts_written"], Counter(d.get("not_selected", {})))


def read_part(out: str, bucket: int) -> list[dict]:
    """The last run's rows of one volume-table part ([] when there is none)."""
    uri = volume_part_uri(out, bucket)
    try:
        return rows_from_bytes(storage.read_bytes(uri))
    except ITEM_ERRORS:
        return []


def _row_of(p: PlannedVolume, s: SegmentSettings) -> dict:
    if p.action != Action.SEGMENT:
        return json.loads(p.record)
    rec = read_record(s.output, p.volume_id, p.fingerprint)
    if rec is None:
        rec = VolumeRecord(volume_id=p.volume_id, source=p.source, format=p.format.value, series_uid=p.series_uid,
                           status=Status.ERROR, fingerprint=p.fingerprint, model=s.model_name,
                           model_identity=s.model_identity, error_type=ErrorType.NOT_RECORDED,
                           error=f"{p.source}: no completion record was written for this volume (the output store "
                                 "failed, or the run stopped first); the next run redoes it")
    return rec.to_row()


def count_rows(rows: list[dict]) -> TableCounts:
    counts = TableCounts()
    for r in rows:
        counts.by_status[r["status"]] += 1
        if r["status"] == Status.ERROR.value:
            counts.by_error_type[r["error_type"] or "error"] += 1
            if len(counts.failures) < MAX_FAILURES_SHOWN:
                counts.failures.append((r["volume_id"], r["error"]))
        elif r["error_type"] == ErrorType.NOT_SELECTED.value:
            counts.not_selected[selection.rule_of(r["error"])] += 1
    return counts


def _identity(row: dict) -> tuple:
    """What makes a table row another one: a part whose rows all keep it is not rewritten."""
    return (row["volume_id"], row["fingerprint"], row["status"], row["error"], row.get("selection_facts") or "")


def write_part(bucket: int, planned: list[PlannedVolume], s: SegmentSettings) -> TableCounts:
    """Write the volume-table part of `bucket` (ok rows first, then by volume id); a part whose
    rows are all carried over unchanged is left as it is."""
    rows = sorted((_row_of(p, s) for p in planned), key=lambda r: (r["status"] != Status.OK.value, r["volume_id"]))
    counts = count_rows(rows)
    previous = read_part(s.output, bucket)
    unchanged = (all(p.action != Action.SEGMENT for p in planned) and
                 [_identity(r) for r in previous] == [_identity(r) for r in rows])
    if not unchanged:
        if rows or previous:
            storage.write_bytes(volume_part_uri(s.output, bucket), table_bytes(VolumeRecord, rows))
            counts.parts_written = 1
    return counts


def settle_bucket(bucket: int, planned: list[PlannedVolume], s: SegmentSettings) -> tuple[TableCounts, int]:
    """After planning: a bucket with nothing to segment gets its table part now; one with volumes
    to segment keeps its plan (in storage, not in any process) until `finish_bucket`. Returns
    (counts so far, volumes to segment)."""
    todo = sum(p.action == Action.SEGMENT for p in planned)
    if not todo:
        return write_part(bucket, planned, s), 0
    storage.write_bytes(plan_part_uri(s.output, bucket), table_bytes(PlannedVolume, [p.to_row() for p in planned]))
    return TableCounts(), todo


@dataclass
class BucketSummary:
    """What planning one volume bucket tells the driver: volumes to segment, the counts of the
    rows already settled, and the scan counts of the partitions whose first fragments it holds."""

    bucket: int
    todo: int
    counts: str  # TableCounts JSON
    listed: int = 0
    reused: int = 0
    scanned: int = 0
    contenders: str = "{}"  # choosing.contenders JSON: what one_per_study and --limit decide on


def plan_bucket(bucket: int, fragments: list[Fragment], s: SegmentSettings) -> BucketSummary:
    """All fragments of one volume bucket -> its plan (kept in storage) and its summary."""

    previous = {r["volume_id"]: r for r in read_part(s.output, bucket)}
    planned = planning.merge_bucket(fragments, previous, s, IndexParts(s.output))
    found = choosing.contenders(planned, s) if s.selecting else {}
    counts, todo = settle_bucket(bucket, planned, s)
    return BucketSummary(bucket, todo, counts.to_json(), *(sum(getattr(f, k) for f in fragments)
                                                           for k in ("listed", "reused", "scanned")),
                         contenders=json.dumps(found))


def demote_bucket(bucket: int, d: choosing.Demotion, s: SegmentSettings) -> tuple[TableCounts, int]:
    """The run-wide choices (choosing.decide) applied to one bucket already planned: its plan, or
    its table part when it had nothing to segment. Returns (counts so far, volumes to segment)."""
    uri = plan_part_uri(s.output, bucket)
    why = d.why
    if storage.exists(uri):
        planned = choosing.demote(read_plan(s.output, bucket), why, s, d.beyond)
        counts, todo = settle_bucket(bucket, planned, s)
        if not todo:
            storage.delete(uri)
        return counts, todo
    rows = choosing.demote_rows(read_part(s.output, bucket), why, s)
    rows.sort(key=lambda r: (r["status"] != Status.OK.value, r["volume_id"]))
    storage.write_bytes(volume_part_uri(s.output, bucket), table_bytes(VolumeRecord, rows))
    counts = count_rows(rows)
    counts.parts_written = 1
    return counts, 0


def read_plan(out: str, bucket: int, action: Action | None = None) -> list[PlannedVolume]:
    rows = rows_from_bytes(storage.read_bytes(plan_part_uri(out, bucket)))
    return [p for p in map(PlannedVolume.from_row, rows) if action is None or p.action == action]


def finish_bucket(bucket: int, s: SegmentSettings) -> TableCounts:
    """The table part of a bucket whose volumes were segmented: from its plan and the completion
    records they wrote. The plan goes once the part is written."""
    counts = write_part(bucket, read_plan(s.output, bucket), s)
    storage.delete(plan_part_uri(s.output, bucket))
    return counts


class IndexParts:
    """`planning.MemberLoader` over an output's series_index parts: the rows of one volume in one
    listing partition (each part read once), for the few volumes that must be segmented although
    none of their objects changed."""

    def __init__(self, out: str):
        self.out, self.parts = out, {}

    def __call__(self, partition: int, volume_id: str) -> list[ObjectRow]:
        if partition not in self.parts:
            rows = rows_from_bytes(storage.read_bytes(index_part_uri(self.out, partition)))
            self.parts[partition] = [ObjectRow.from_row(r) for r in rows]
        return [r for r in self.parts[partition] if r.volume_id == volume_id]


def read_table_folder(uri: str) -> list[dict]:
    """Every row of a Parquet dataset folder (local or s3://), part by part: for tests, the demo
    and small outputs. Large outputs are read with any Parquet engine (`pyarrow.dataset`, DuckDB,
    Spark) pointed at the folder."""
    rows: list[dict] = []
    try:
        entries = storage.list_files(uri)
    except ITEM_ERRORS:
        return rows
    for e in entries:
        if e.uri.endswith(".parquet"):
            rows += rows_from_bytes(storage.read_bytes(e.uri))
    return rows


def read_volume_table(out: str) -> list[dict]:
    return read_table_folder(storage.join(out, "volumes"))


def read_series_index(out: str) -> list[dict]:
    return read_table_folder(storage.join(out, "series_index"))


# ---- the plan a user reads (unet segment --plan-only) ----------------------------------------------
PLAN_TABLE = "plan.parquet"
PLAN_COLUMNS = ("volume_id", "source", "study_uid", "format", "plan", "reason", "n_slices", "estimated_bytes")


@dataclass
class PlanTotals:
    """What --plan-only prints: volumes by what a run would do with them, and the work to do."""

    by_plan: Counter = field(default_factory=Counter)  # segment / done / not_selected / error / skipped
    not_selected: Counter = field(default_factory=Counter)  # by rule
    slices: int = 0  # of the volumes to segment
    estimated_bytes: int = 0  # their voxels, decoded


def _plan_row(vid: str, source: str, fmt: str, plan: str, reason: str, facts: str) -> dict:
    f = selection.VolumeFacts.from_json(facts) if facts else None
    return {"volume_id": vid, "source": source, "study_uid": f.study_uid if f else "", "format": fmt, "plan": plan,
            "reason": reason, "n_slices": f.n_slices if f else 0, "estimated_bytes": f.decoded_bytes if f else 0}


def _plan_of(row: dict) -> str:
    if row["status"] == Status.OK.value:
        return "done"
    if row["error_type"] == ErrorType.NOT_SELECTED.value:
        return "not_selected"
    return row["status"]


def plan_rows(out: str, bucket: int, pending: bool) -> list[dict]:
    """One bucket's volumes (objects set aside are left out) as rows of the plan table."""
    rows = []
    if pending:
        for p in read_plan(out, bucket):
            if p.action == Action.SEGMENT:
                rows.append(_plan_row(p.volume_id, p.source, p.format.value, "segment", "", p.facts))
            elif not p.volume_id.startswith("obj-"):
                r = json.loads(p.record)
                rows.append(_plan_row(p.volume_id, p.source, p.format.value, _plan_of(r), r["error"] if r["status"]
                                      != Status.OK.value else "", p.facts))
    else:
        for r in read_part(out, bucket):
            if not r["volume_id"].startswith("obj-"):
                rows.append(_plan_row(r["volume_id"], r["source"], r["format"], _plan_of(r),
                                      r["error"] if r["status"] != Status.OK.value else "", r.get("selection_facts", "")))
    return rows


def write_plan_table(out: str, buckets: int, pending: set[int]) -> PlanTotals:
    """plan.parquet: every volume with what a run would do with it, written part by part (one
    bucket's rows held at a time)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(c, pa.int64() if c in ("n_slices", "estimated_bytes") else pa.string()) for c in PLAN_COLUMNS])
    totals = PlanTotals()
    sink = io.BytesIO()
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        for bucket in range(buckets):
            rows = plan_rows(out, bucket, bucket in pending)
            for r in rows:
                totals.by_plan[r["plan"]] += 1
                if r["plan"] == "segment":
                    totals.slices += r["n_slices"]
                    totals.estimated_bytes += r["estimated_bytes"]
                elif r["plan"] == "not_selected":
                    totals.not_selected[selection.rule_of(r["reason"])] += 1
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    storage.write_bytes(storage.join(out, PLAN_TABLE), sink.getvalue())
    return totals
