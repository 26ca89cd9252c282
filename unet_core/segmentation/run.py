"""The segment run as a domain object: open the output, plan, segment, finish, deliver and
summarise, calling an executor (executor.py) for the work that fans out. Every decision of a run
is here; jobs/segment.py parses arguments, starts Ray and prints.

    open_output(store, inputs, overwrite)   ownership checks, the last run's layout (or none),
                                            what an earlier run left half-done removed
    run = SegmentRun(store, executor)
    run.layout(inputs, layout, follow)      listing units and the layout (written on a first run)
    run.plan(units, settings)               Planned: counts per bucket, the run-wide choices
                                            (one_per_study, --limit) applied, the buckets to segment
    run.plan_unchanged(units, settings)     the same plan made here without the executor, when
                                            nothing changed and nothing is to be segmented; else None
    run.segment(planned, on_volume)         Segmented: volumes done, resumed, failed, slices
    run.finish(planned)                     the table parts written; stale parts and the plan gone
    run.deliver(planned, workers, progress) SEGs and RTSTRUCTs not stored yet sent (--send)
    summarise(...)                          the RunSummary of the run

The driver holds counters and one small summary per bucket, never a row per object or volume.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from unet_core import ownership
from unet_core.errors import InputError, InternalError, StorageError
from unet_core.io import listing
from unet_core.segmentation import choosing, partitions, planning
from unet_core.segmentation.delivery import SendCounts, send_pending
from unet_core.segmentation.executor import Executor, PartitionWork, VolumeDone, merge_by_bucket
from unet_core.segmentation.layout import Layout, partition_of
from unet_core.segmentation.records import Fragment, Status
from unet_core.segmentation.settings import SegmentSettings
from unet_core.segmentation.stages import Outcome
from unet_core.segmentation.store import Folder, OutputStore
from unet_core.segmentation.summary import RunSummary
from unet_core.segmentation.tables import BucketSummary, TableCounts, demote_bucket

# What a run keeps of the last one unless --overwrite: the manifest and table are reused, an
# interrupted run's plan is not.
REUSED_FOLDERS = (Folder.SERIES_INDEX.value, Folder.VOLUMES.value, Folder.PLAN.value)

# The breaker: a run stops (exit 1) once this many volumes failed with an internal error and they
# are more than this fraction of the volumes it segmented. Bad data fails with a reason; a
# regression fails every volume the same way and should not be written up as N bad volumes.
BREAKER_INTERNAL_ROWS = 20
BREAKER_FRACTION = 0.5
# plan_unchanged is tried on outputs whose last run listed at most this many objects: the driver
# then holds at most this many fragments (about 310 bytes each: one per volume and partition).
QUICK_PLAN_MAX_OBJECTS = 500_000

log = logging.getLogger(__name__)


@dataclass
class Opened:
    """What opening an output found and removed."""

    layout: Layout | None  # the last run's, when this run can reuse it
    swept: int = 0  # unfinished temporary files of an interrupted run
    removed: int = 0  # objects of earlier runs this one does not reuse
    left: int = 0  # objects in the output's folders this tool did not write (kept)
    other_inputs: tuple[str, ...] = ()  # the last run's inputs, when they differ from this run's


def open_output(store: OutputStore, inputs: tuple[str, ...], overwrite: bool,
                check: Callable[[], None] | None = None) -> Opened:
    """Check that the output is this tool's (or empty) and reuse the last run's layout where it
    can. Only objects this tool names are removed (ownership.py); `check` (the run's
    `Lease.check`) runs before each removal."""
    out = store.root
    ownership.check_inputs(inputs, out)
    ownership.check_output(out, ownership.SEGMENT_OUTPUT)
    opened = Opened(None, swept=ownership.sweep_temporaries(out, ownership.SEGMENT_OUTPUT))
    layout = None if overwrite else store.read_layout()
    if layout is not None and layout.inputs != inputs:
        opened.other_inputs, layout = layout.inputs, None
    if layout is not None:
        layout = store.upgrade_layout(layout)
    folders = ownership.OVERWRITE_FOLDERS if overwrite else REUSED_FOLDERS
    opened.removed, opened.left = ownership.delete_owned(out, folders if layout is None else (Folder.PLAN.value,),
                                                         check=check)
    opened.layout = layout
    return opened


@dataclass
class Planned:
    """What planning tells the driver: bounded by the layout's buckets, never by the archive."""

    settings: SegmentSettings
    layout: Layout
    listed: int = 0
    reused: int = 0
    scanned: int = 0
    seconds: float = 0.0
    totals: TableCounts = field(default_factory=TableCounts)  # rows settled at planning
    pending: list[tuple[int, int]] = field(default_factory=list)  # (bucket, volumes to segment)
    seen: set[int] = field(default_factory=set)  # buckets that hold rows

    @property
    def todo(self) -> int:
        return sum(n for _, n in self.pending)

    @property
    def pending_buckets(self) -> list[int]:
        return [b for b, _ in self.pending]


@dataclass
class Segmented:
    """What segmenting did, counted as the volumes come back."""

    segmented: int = 0
    resumed: int = 0  # complete already: recorded by an earlier (interrupted) run
    retried: int = 0  # complete already: recorded by this run's own earlier attempt (a retried task)
    slices: int = 0
    failed: int = 0
    internal: int = 0  # failed now with an unexpected exception (error_type internal)
    sent: int = 0  # SEGs and RTSTRUCTs stored by the volume tasks (--send)
    rtstructs_sent: int = 0  # of `sent`, RTSTRUCTs
    predictor_wait: float = 0.0  # start-up of the predictors the planning did not hide
    seconds: float = 0.0  # from the wait for the predictors to the last volume
    started: float = 0.0  # time.perf_counter() when the wait began

    def add(self, v: VolumeDone) -> None:
        if v.outcome == Outcome.RESUMED:
            self.resumed += 1
        elif v.outcome == Outcome.RETRIED:
            self.retried += 1
        else:
            self.segmented += 1
            self.slices += v.n_slices
        self.failed += v.status != Status.OK
        self.internal += v.internal
        self.sent += v.sent
        self.rtstructs_sent += v.rtstructs_sent

    def looks_like_a_bug(self) -> bool:
        """Whether the breaker trips: many internal errors, and most of what was segmented now."""
        return self.internal >= BREAKER_INTERNAL_ROWS and self.internal > BREAKER_FRACTION * self.segmented


@dataclass(frozen=True)
class Pool:
    """What the predictor pool reports for the summary."""

    started: int = 0
    live: int = 0


class SegmentRun:
    """`executor` runs the work that fans out; it may be set later (None until then): a re-run
    planned by `plan_unchanged` with nothing to segment never needs one."""

    def __init__(self, store: OutputStore, executor: Executor | None = None):
        self.store, self.executor = store, executor

    def layout(self, inputs: tuple[str, ...], layout: Layout | None,
               follow_symlinks: bool) -> tuple[list[planning.Unit], Layout]:
        """The listing units (fanned out to the last run's depth when it is reused) and the layout;
        a first run's layout is written now, its counts sized to the units and the executor's task
        slots (partitions.py)."""
        units, depth = planning.fan_out(list(inputs), layout.depth if layout else None, follow_symlinks)
        if not units:
            raise InputError(f"no objects under {', '.join(inputs)}")
        if layout is None:
            counts = partitions.choose_counts(len(units), self._executor().slots())
            layout = Layout(inputs, depth, counts.partitions, counts.buckets)
            self.store.write_layout(layout)
        return units, layout

    def plan(self, units: list[planning.Unit], s: SegmentSettings, layout: Layout,
             started: float | None = None) -> Planned:
        """Listing, manifest join and header scan per listing partition; fragments merged and
        planned per volume bucket (each bucket's plan stays in the store); then the run-wide
        choices over every bucket's contenders. `seconds` counts from `started` (a
        time.perf_counter() value; default: now)."""
        t = time.perf_counter() if started is None else started
        roots = tuple(listing.real_roots(list(s.inputs)))
        return self._planned(self._executor().plan_buckets(_work(units, layout), s, roots), s, layout, t)

    def plan_unchanged(self, units: list[planning.Unit], s: SegmentSettings, layout: Layout,
                       started: float | None = None) -> Planned | None:
        """A re-run's plan made in this process, without the executor, when nothing is to be done:
        each partition's listing checked against the join's columns of its series_index part
        (planning.reuse_partition), then every bucket merged as `plan` would, so a plan it gives
        has nothing to segment. None, having written nothing the executor's planning would not
        write as well, as soon as a partition holds a new, changed or gone object or cannot be listed or
        read now, or a volume is to be segmented (a failure retried, a model or output option
        changed): then `plan` does the work on the executor. Outputs whose last run listed more
        than QUICK_PLAN_MAX_OBJECTS objects are not tried: the driver would hold a fragment per
        volume of all of them, and list serially what the executor lists in parallel.

        The common re-run (a nightly run over an archive that did not change) then costs a listing
        and a few small Parquet reads per partition, with no cluster started (docs/design.md,
        "A re-run with nothing new")."""
        t = time.perf_counter() if started is None else started
        last = RunSummary.read(s.output)
        if last is None or last.objects_listed > QUICK_PLAN_MAX_OBJECTS:
            return None
        roots = tuple(listing.real_roots(list(s.inputs)))
        try:
            return self._planned(merge_by_bucket(_reused(_work(units, layout), s, roots), s, _segmenting), s, layout, t)
        except _GiveUp as e:
            log.info("planning on the cluster: %s", e)
            return None

    def _planned(self, buckets: Iterable[BucketSummary], s: SegmentSettings, layout: Layout, t: float) -> Planned:
        """Planned from one BucketSummary per bucket holding rows, with the run-wide choices applied."""
        planned = Planned(s, layout)
        counts: dict[int, TableCounts] = {}
        todo: dict[int, int] = {}
        found: dict[int, choosing.Contenders] = {}
        for b in buckets:  # one per bucket: bounded by the layout
            self._add(planned, b)
            counts[b.bucket], todo[b.bucket] = b.counts, b.todo
            found[b.bucket] = b.contenders
        if not planned.listed:
            raise InputError(f"no objects under {', '.join(s.inputs)}")
        for bucket, demotion in choosing.decide(s, found).items():
            counts[bucket], todo[bucket] = demote_bucket(bucket, demotion, s)
        for c in counts.values():
            planned.totals.add(c)
        planned.pending = [(b, n) for b, n in sorted(todo.items()) if n]
        planned.seconds = time.perf_counter() - t
        return planned

    def _executor(self) -> Executor:
        if self.executor is None:
            raise InternalError("the segment run needs its executor here, and none was given")
        return self.executor

    @staticmethod
    def _add(planned: Planned, b: BucketSummary) -> None:
        planned.listed += b.listed
        planned.reused += b.reused
        planned.scanned += b.scanned
        planned.seen.add(b.bucket)

    def ready(self, planned: Planned) -> Segmented:
        """Wait for the predictors when the plan has volumes to segment; returns the Segmented
        that `segment` fills (the wait counted)."""
        done = Segmented(started=time.perf_counter())
        if planned.todo:
            self._executor().ready()
            done.predictor_wait = time.perf_counter() - done.started
        return done

    def segment(self, planned: Planned, on_volume: Callable[[Segmented], None] | None = None,
                done: Segmented | None = None) -> Segmented:
        """Decode -> predict -> finish and write, for every volume the plan marks (after `ready`,
        which it calls when `done` is not given)."""
        done = done if done is not None else self.ready(planned)
        if not planned.todo:
            return done
        for v in self._executor().segment_volumes(planned.pending_buckets, planned.settings, planned.todo):
            done.add(v)
            if done.looks_like_a_bug():
                raise InternalError(
                    f"{done.internal} of the {done.segmented} volumes segmented so far failed with an internal error "
                    "(an unexpected exception, not bad input): this looks like a bug, so the run stopped. Their "
                    f"rows in {self.store.root} name the exception; run with -v for its traceback. Volumes "
                    "already done are kept; a re-run redoes the failed ones")
            if on_volume is not None:
                on_volume(done)
        done.seconds = time.perf_counter() - done.started
        return done

    def finish(self, planned: Planned) -> TableCounts:
        """The table parts of the buckets that had volumes to segment (parts of buckets that no
        longer hold a volume go; so does the plan folder, empty now). Returns the table's counts."""
        totals = TableCounts()
        totals.add(planned.totals)
        if planned.pending:
            for c in self._executor().finish_buckets(planned.pending_buckets, planned.settings):
                totals.add(c)
        store = planned.settings.store()  # fenced by the run's lease
        for b in set(range(planned.layout.buckets)) - planned.seen:
            store.delete_volumes(b)
        ownership.delete_owned(self.store.root, (Folder.PLAN.value,),  # a local run's empty folder goes
                               check=store.check_lease)
        return totals

    def deliver(self, planned: Planned, workers: int,
                progress: Callable[[SendCounts], None] | None = None) -> SendCounts | None:
        """SEGs and RTSTRUCTs not stored yet at --send's service (sent inline as written: these failed then,
        or are an earlier run's); None when the run sends nothing."""
        dest = planned.settings.send_seg
        if not dest:
            return None
        planned.settings.check_lease()  # delivery rewrites table parts and sends: only while the run holds the output
        return send_pending(self.store.root, planned.layout.buckets, dest, workers, progress,
                            check=planned.settings.check_lease)  # and before each object and part rewrite


class _GiveUp(Exception):
    """plan_unchanged leaves the plan to the executor (raised before anything is written)."""


def _reused(work: list[PartitionWork], s: SegmentSettings, roots: tuple[str, ...]) -> Iterator[list[Fragment]]:
    """Each partition's fragments as the last run's rows give them; _GiveUp at the first that changed."""
    for w in work:
        try:
            frags = planning.reuse_partition(w.partition, list(w.units), s, roots)
        except StorageError as e:  # the executor's tasks list it again, with their retries
            raise _GiveUp(f"partition {w.partition} could not be listed here ({e})") from None
        if frags is None:
            raise _GiveUp(f"partition {w.partition} holds new, changed or removed objects")
        yield frags


def _segmenting(partition: int, volume_id: str) -> list:
    """The member loader of plan_unchanged: a volume of an unchanged listing is to be segmented
    (raised where its members would be loaded, before its bucket writes anything)."""
    raise _GiveUp(f"{volume_id} is to be segmented")


def _work(units: list[planning.Unit], layout: Layout) -> list[PartitionWork]:
    """Every listing partition of the layout with the units routed to it (layout.partition_of)."""
    by_partition: dict[int, list[planning.Unit]] = {}
    for u in units:
        by_partition.setdefault(partition_of(u.key, layout.partitions), []).append(u)
    return [PartitionWork(p, tuple(by_partition.get(p, ()))) for p in range(layout.partitions)]


def summarise(planned: Planned, done: Segmented, totals: TableCounts, sent: SendCounts | None, pool: Pool,
              total_seconds: float) -> RunSummary:
    """The run's summary.json record, from the table's counts and this run's work."""
    s = planned.settings
    not_selected = sum(totals.not_selected.values())
    return RunSummary(
        output=s.output, model=s.model_name, model_identity=s.model_identity, model_registry=s.model_registry,
        model_version=s.model_version, model_run_id=s.model_run_id,
        finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        volumes_ok=totals.by_status.get(Status.OK, 0), volumes_failed=totals.by_status.get(Status.ERROR, 0),
        objects_skipped=totals.by_status.get(Status.SKIPPED, 0) - not_selected,
        failures_by_type=dict(totals.by_error_type), volumes_not_selected=not_selected,
        not_selected_by_rule=dict(totals.not_selected), selection=s.rules.to_dict(),
        sample=s.sample, limit=s.limit, seed=s.seed,
        volume_table_parts_written=totals.parts_written, objects_listed=planned.listed,
        headers_read=planned.scanned, headers_unchanged=planned.reused, segmented_now=done.segmented,
        resumed_from_records=done.resumed, retried_complete=done.retried, slices_now=done.slices,
        slices_per_second=done.slices / max(done.seconds, 1e-9), scan_seconds=planned.seconds,
        predictor_wait_seconds=done.predictor_wait, pipeline_seconds=done.seconds, total_seconds=total_seconds,
        predictors_started=pool.started, predictors_live=pool.live, dicom_seg=s.dicom_seg, rtstruct=s.rtstruct, qc=s.qc,
        keep_phi=s.keep_phi, sent_to=s.send_seg, segs_sent=done.sent + (sent.sent if sent else 0),
        segs_send_failed=sent.failed if sent else 0)
