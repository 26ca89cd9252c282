"""The volume table, one part per bucket, from a bucket's planned volumes and the completion
records this run wrote; and the counts a job summary needs (never rows). Every part is read and
written through the output's store (store.py)."""
from __future__ import annotations

import enum
import io
from collections import Counter
from dataclasses import dataclass, field

from unet_core.errors import ErrorType
from unet_core.io import storage
from unet_core.segmentation import choosing, planning, selection
from unet_core.segmentation.records import (
    Action,
    Format,
    Fragment,
    ObjectRow,
    PlannedVolume,
    Record,
    RowKind,
    Status,
    VolumeRecord,
)
from unet_core.segmentation.selection import Rule
from unet_core.segmentation.settings import SegmentSettings
from unet_core.segmentation.store import OutputStore, VolumePart

MAX_FAILURES_SHOWN = 20


@dataclass
class TableCounts(Record):
    """The counts of volume-table rows: the one aggregation that the job's summary, `unet status`,
    the report and --plan-only count rows by (`add_row`); parts add up (`add`). Between processes it
    is a row of its own Arrow schema (Counters as maps)."""

    by_status: Counter = field(default_factory=Counter)
    by_error_type: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (volume id, error), a few
    parts_written: int = 0
    not_selected: Counter = field(default_factory=Counter)  # volumes left out, by the rule that did

    def add_row(self, r: VolumeRecord) -> None:
        self.by_status[r.status.value] += 1
        if r.status == Status.ERROR:
            self.by_error_type[r.error_type.value or "error"] += 1
            if len(self.failures) < MAX_FAILURES_SHOWN:
                self.failures.append((r.volume_id, r.error))
        elif r.not_selected:
            self.not_selected[r.rule.value] += 1

    def add(self, other: "TableCounts") -> None:
        self.by_status.update(other.by_status)
        self.by_error_type.update(other.by_error_type)
        self.failures = (self.failures + other.failures)[:MAX_FAILURES_SHOWN]
        self.parts_written += other.parts_written
        self.not_selected.update(other.not_selected)


def _row_of(p: PlannedVolume, s: SegmentSettings) -> VolumeRecord:
    if p.action != Action.SEGMENT:
        if p.record is None:
            raise ValueError(f"{p.volume_id}: a planned {p.action.value} row without its record")
        return p.record
    rec = OutputStore(s.output).read_record(p.volume_id, p.fingerprint)
    if rec is None:
        rec = VolumeRecord(volume_id=p.volume_id, source=p.source, format=p.format, series_uid=p.series_uid,
                           status=Status.ERROR, fingerprint=p.fingerprint, model=s.model_name,
                           model_identity=s.model_identity, error_type=ErrorType.NOT_RECORDED,
                           error=f"{p.source}: no completion record was written for this volume (the output store "
                                 "failed, or the run stopped first); the next run redoes it")
    return rec


def count_rows(rows: list[VolumeRecord]) -> TableCounts:
    counts = TableCounts()
    for r in rows:
        counts.add_row(r)
    return counts


def _identity(row: VolumeRecord) -> tuple:
    """What makes a table row another one: a part whose rows all keep it is not rewritten (a
    layout-3 part, which lacks the kind and rule columns, always is)."""
    return (row.volume_id, row.fingerprint, row.status, row.error, row.selection_facts, row.kind, row.rule)


def _table_order(r: VolumeRecord) -> tuple:
    return r.status != Status.OK, r.volume_id


def write_part(bucket: int, planned: list[PlannedVolume], s: SegmentSettings,
               part: VolumePart | None = None) -> TableCounts:
    """Write the volume-table part of `bucket` (ok rows first, then by volume id); a part whose
    rows are all carried over unchanged is left as it is. `part`: the stored part, when the
    caller read it already."""
    store = s.store()
    rows = sorted((_row_of(p, s) for p in planned), key=_table_order)
    counts = count_rows(rows)
    part = store.read_volume_part(bucket) if part is None else part
    previous = part.rows
    unchanged = (all(p.action != Action.SEGMENT for p in planned) and
                 [_identity(r) for r in previous] == [_identity(r) for r in rows] and not part.outdated)
    if not unchanged:
        if rows or previous:
            store.write_volumes(bucket, rows)
            counts.parts_written = 1
    return counts


def settle_bucket(bucket: int, planned: list[PlannedVolume], s: SegmentSettings,
                  part: VolumePart | None = None) -> tuple[TableCounts, int]:
    """After planning: a bucket with nothing to segment gets its table part now; one with volumes
    to segment keeps its plan (in storage, not in any process) until `finish_bucket`. Returns
    (counts so far, volumes to segment)."""
    todo = sum(p.action == Action.SEGMENT for p in planned)
    if not todo:
        return write_part(bucket, planned, s, part), 0
    s.store().write_plan(bucket, planned)
    return TableCounts(), todo


@dataclass
class BucketSummary(Record):
    """What planning one volume bucket tells the driver: volumes to segment, the counts of the
    rows already settled, and the scan counts of the partitions whose first fragments it holds."""

    bucket: int
    todo: int
    counts: TableCounts
    listed: int = 0
    reused: int = 0
    scanned: int = 0
    contenders: choosing.Contenders = field(default_factory=choosing.Contenders)  # for one_per_study and --limit


def plan_bucket(bucket: int, fragments: list[Fragment], s: SegmentSettings,
                load_members: planning.MemberLoader | None = None) -> BucketSummary:
    """All fragments of one volume bucket -> its plan (kept in storage) and its summary.
    `load_members` fetches the members of a volume to segment that came without them (default:
    from the series_index parts); nothing is written before it is called."""

    part = OutputStore(s.output).read_volume_part(bucket)  # read once: the merge and the part's rewrite
    previous = {r.volume_id: r for r in part.rows}
    planned = planning.merge_bucket(fragments, previous, s, load_members or IndexParts(s.output))
    found = choosing.contenders(planned, s) if s.selecting else choosing.Contenders()
    counts, todo = settle_bucket(bucket, planned, s, part)
    return BucketSummary(bucket, todo, counts, *(sum(getattr(f, k) for f in fragments)
                                                 for k in ("listed", "reused", "scanned")), contenders=found)


def demote_bucket(bucket: int, d: choosing.Demotion, s: SegmentSettings) -> tuple[TableCounts, int]:
    """The run-wide choices (choosing.decide) applied to one bucket already planned: its plan, or
    its table part when it had nothing to segment. Returns (counts so far, volumes to segment)."""
    store = s.store()
    why = d.why
    if store.has_plan(bucket):
        plan = store.read_plan_arrow(bucket)
        if (kept := _demote_in_plan(store, bucket, plan, d, s)) is not None:
            return TableCounts(), kept
        planned = choosing.demote([PlannedVolume.from_row(r) for r in plan.to_pylist()], why, s, d.beyond)
        counts, todo = settle_bucket(bucket, planned, s)
        if not todo:
            store.delete_plan(bucket)
        return counts, todo
    rows = choosing.demote_rows(store.read_volumes(bucket), why, s)
    rows.sort(key=_table_order)
    store.write_volumes(bucket, rows)
    counts = count_rows(rows)
    counts.parts_written = 1
    return counts, 0


def _demote_in_plan(store: OutputStore, bucket: int, plan, d: choosing.Demotion, s: SegmentSettings) -> int | None:
    """`demote_bucket` on a plan (`plan`: its Arrow table, store.read_plan_arrow) that keeps
    volumes to segment: only the rows left out are made into PlannedVolumes, demoted and made rows
    again; every other row, with its members (the bulk of a plan: one struct per object), is
    written back as the Arrow values it was read as, never parsed into records (that round trip
    cost about a tenth of a first run's planning CPU when one_per_study left a volume out in every
    bucket). The plan's rows, order and values are those of `choosing.demote` over the whole plan.
    Returns the volumes left to segment; None when none would be (the rows then go to the table
    part, which needs them all as records)."""
    import pyarrow as pa

    actions = [Action(a) for a in plan.column("action").to_pylist()]
    out = [i for i, (vid, action) in enumerate(zip(plan.column("volume_id").to_pylist(), actions, strict=True))
           if choosing.left_out(vid, action, d.why, s, d.beyond) is not None]
    todo = sum(a == Action.SEGMENT for a in actions) - sum(actions[i] == Action.SEGMENT for i in out)
    if not todo:
        return None
    if out:  # else the plan stands as it is
        demoted = choosing.demote([PlannedVolume.from_row(r) for r in plan.take(out).to_pylist()], d.why, s, d.beyond)
        new = pa.Table.from_pylist([p.to_row() for p in demoted], schema=plan.schema)
        pieces, start = [], 0  # the plan's rows in order: slices of it (no copy) around the new rows
        for k, i in enumerate(out):
            pieces += [plan.slice(start, i - start), new.slice(k, 1)]
            start = i + 1
        store.write_plan_arrow(bucket, pa.concat_tables([*pieces, plan.slice(start)]))
    return todo


def finish_bucket(bucket: int, s: SegmentSettings) -> TableCounts:
    """The table part of a bucket whose volumes were segmented: from its plan and the completion
    records they wrote. The plan goes once the part is written."""
    store = s.store()
    counts = write_part(bucket, store.read_plan(bucket), s)
    store.delete_plan(bucket)
    return counts


class IndexParts:
    """`planning.MemberLoader` over an output's series_index parts: the rows of one volume in one
    listing partition (each part read once), for the few volumes that must be segmented although
    none of their objects changed."""

    def __init__(self, out: str):
        self.store, self.parts = OutputStore(out), {}

    def __call__(self, partition: int, volume_id: str) -> list[ObjectRow]:
        if partition not in self.parts:
            self.parts[partition] = self.store.read_index(partition)
        return [r for r in self.parts[partition] if r.volume_id == volume_id]


def read_volume_table(out: str) -> list[dict]:
    """Every row of the volume table as plain values (this layout's columns, whatever layout wrote
    it): for tests, the demo and small outputs. Large outputs are read part by part, or with any
    Parquet engine (`pyarrow.dataset`, DuckDB, Spark) pointed at the folder."""
    return [r.to_row() for r in OutputStore(out).volume_table()]


def read_series_index(out: str) -> list[dict]:
    return [r.to_row() for r in OutputStore(out).series_index()]


# ---- the plan a user reads (unet segment --plan-only) ----------------------------------------------
class Plan(enum.StrEnum):
    """What a run would do with a volume (the plan table's `plan`)."""

    SEGMENT = "segment"
    DONE = "done"
    NOT_SELECTED = "not_selected"
    ERROR = "error"
    SKIPPED = "skipped"


@dataclass
class PlanRow(Record):
    """One row of plan.parquet: a volume and what a run would do with it."""

    volume_id: str
    source: str
    study_uid: str
    format: Format
    plan: Plan
    reason: str
    n_slices: int
    estimated_bytes: int  # its voxels, decoded
    rule: Rule = Rule.NONE  # what leaves a not_selected volume out


@dataclass
class PlanTotals:
    """What --plan-only prints: volumes by what a run would do with them, and the work to do."""

    by_plan: Counter = field(default_factory=Counter)  # Plan -> volumes
    rows: TableCounts = field(default_factory=TableCounts)  # of the volumes not to segment
    slices: int = 0  # of the volumes to segment
    estimated_bytes: int = 0  # their voxels, decoded

    @property
    def not_selected(self) -> Counter:  # by rule
        return self.rows.not_selected

    def add(self, r: PlanRow, rec: VolumeRecord | None) -> None:
        """A row of the plan table, and the table row it stands for (None: a volume to segment)."""
        self.by_plan[r.plan.value] += 1
        if rec is None:
            self.slices += r.n_slices
            self.estimated_bytes += r.estimated_bytes
        else:
            self.rows.add_row(rec)


def _plan_row(rec: VolumeRecord, plan: Plan, f: selection.VolumeFacts | None) -> PlanRow:
    return PlanRow(volume_id=rec.volume_id, source=rec.source, study_uid=f.study_uid if f else "", format=rec.format,
                   plan=plan, reason=rec.error if plan not in (Plan.SEGMENT, Plan.DONE) else "",
                   n_slices=f.n_slices if f else 0, estimated_bytes=f.decoded_bytes if f else 0, rule=rec.rule)


def _plan_of(rec: VolumeRecord) -> Plan:
    if rec.status == Status.OK:
        return Plan.DONE
    return Plan.NOT_SELECTED if rec.not_selected else Plan(rec.status.value)


def plan_rows(out: str, bucket: int, pending: bool) -> list[tuple[PlanRow, VolumeRecord | None]]:
    """One bucket's volumes (objects set aside are left out) as rows of the plan table, each with
    its table row (None for a volume to segment)."""
    store, rows = OutputStore(out), []
    if pending:
        for p in store.read_plan(bucket):
            if p.action == Action.SEGMENT:
                rec = VolumeRecord(volume_id=p.volume_id, source=p.source, format=p.format, series_uid=p.series_uid,
                                   status=Status.OK)
                rows.append((_plan_row(rec, Plan.SEGMENT, p.facts), None))
            elif p.kind == RowKind.VOLUME and p.record is not None:
                rec = p.record
                rows.append((_plan_row(rec, _plan_of(rec), p.facts), rec))
    else:
        rows = [(_plan_row(r, _plan_of(r), r.selection_facts), r) for r in store.read_volumes(bucket)
                if r.kind == RowKind.VOLUME]
    return rows


def write_plan_table(out: str, buckets: int, pending: set[int]) -> PlanTotals:
    """plan.parquet: every volume with what a run would do with it, written part by part (one
    bucket's rows held at a time)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    totals = PlanTotals()
    sink = io.BytesIO()
    with pq.ParquetWriter(sink, PlanRow.arrow_schema(), compression="zstd") as writer:
        for bucket in range(buckets):
            rows = plan_rows(out, bucket, bucket in pending)
            for r, rec in rows:
                totals.add(r, rec)
            if rows:
                writer.write_table(pa.Table.from_pylist([r.to_row() for r, _ in rows], schema=PlanRow.arrow_schema()))
    storage.write_bytes(OutputStore(out).plan_table_uri, sink.getvalue())
    return totals
