"""What a segment run asks of the machinery that runs it, and the serial executor that runs it in
this process (for tests, a debugger, a laptop without Ray).

    Executor.ready()                      the predictors can take work (a run with volumes to segment)
    Executor.slots()                      task slots (CPUs not held by predictors): a first run's
                                          layout is sized to them (partitions.py)
    Executor.plan_buckets(work, s)        map `scan_stage` over the listing partitions, group the
                                          fragments by volume bucket, map `merge_stage` over the
                                          buckets -> one BucketSummary per bucket holding rows
    Executor.segment_volumes(buckets, s)  map `segment_stage` over the volumes to segment of those
                                          buckets (read from their plan parts), on a predictor pool
    Executor.finish_buckets(buckets, s)   map `finish_stage` over those buckets -> TableCounts

The stage functions are the whole of the work: an executor only moves their inputs and outputs
(Ray's lives in jobs/segment.py, and runs exactly these functions in its tasks and actors).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol

from unet_core.errors import ErrorType
from unet_core.segmentation import planning
from unet_core.segmentation.records import Action, Fragment, PlannedVolume, Status
from unet_core.segmentation.settings import SegmentSettings
from unet_core.segmentation.stages import Outcome, Predict, segment_volume
from unet_core.segmentation.store import OutputStore
from unet_core.segmentation.tables import BucketSummary, TableCounts, finish_bucket, plan_bucket


@dataclass(frozen=True)
class PartitionWork:
    """One listing partition: the listing units routed to it (layout.partition_of)."""

    partition: int
    units: tuple[planning.Unit, ...]


@dataclass(frozen=True)
class VolumeDone:
    """What the driver learns of one volume segmented (or resumed): never its row."""

    status: Status
    n_slices: int
    outcome: Outcome
    sent: int  # its DICOM objects (SEG, RTSTRUCT) stored at --send's service by this task
    rtstructs_sent: int = 0  # of `sent`, its RTSTRUCT
    internal: bool = False  # segmented now and failed with an unexpected exception (error_type internal)


class Executor(Protocol):
    def ready(self) -> None:
        """Block until the predictors can take work (called once, before the first volume)."""

    def slots(self) -> int: ...

    def plan_buckets(self, work: list[PartitionWork], s: SegmentSettings,
                     roots: tuple[str, ...]) -> Iterable[BucketSummary]: ...

    def segment_volumes(self, buckets: list[int], s: SegmentSettings, volumes: int) -> Iterable[VolumeDone]: ...

    def finish_buckets(self, buckets: list[int], s: SegmentSettings) -> Iterable[TableCounts]: ...


# ---- the stages (plain functions of typed values) ------------------------------------------------
def scan_stage(work: PartitionWork, s: SegmentSettings, roots: tuple[str, ...]) -> list[Fragment]:
    """One listing partition -> its volume fragments (planning.index_partition)."""
    return planning.index_partition(work.partition, list(work.units), s, roots)[0]


def merge_stage(fragments: list[Fragment], s: SegmentSettings,
                load_members: planning.MemberLoader | None = None) -> BucketSummary:
    """Every fragment of one volume bucket -> its plan (kept in the store) and its summary."""
    return plan_bucket(fragments[0].bucket, fragments, s, load_members)


def merge_by_bucket(partitions: Iterable[list[Fragment]], s: SegmentSettings,
                    load_members: planning.MemberLoader | None = None) -> Iterator[BucketSummary]:
    """Every partition's fragments grouped by volume bucket in this process, then `merge_stage`
    per bucket in bucket order (every partition is read before the first merge)."""
    by_bucket: dict[int, list[Fragment]] = defaultdict(list)
    for fragments in partitions:
        for f in fragments:
            by_bucket[f.bucket].append(f)
    for bucket in sorted(by_bucket):
        yield merge_stage(by_bucket[bucket], s, load_members)


def volumes_stage(bucket: int, s: SegmentSettings) -> list[PlannedVolume]:
    """The volumes to segment of one planned bucket."""
    return OutputStore(s.output).read_plan(bucket, Action.SEGMENT)


def segment_stage(planned: PlannedVolume, s: SegmentSettings, predict: Predict) -> VolumeDone:
    rec, outcome = segment_volume(planned, s, predict)
    now = outcome == Outcome.DONE
    return VolumeDone(rec.status, rec.n_slices, outcome, int(now and bool(rec.sent)) + int(now and bool(rec.rtstruct_sent)),
                      int(now and bool(rec.rtstruct_sent)), now and rec.error_type == ErrorType.INTERNAL)


def finish_stage(bucket: int, s: SegmentSettings) -> TableCounts:
    return finish_bucket(bucket, s)


# ---- in this process -----------------------------------------------------------------------------
@dataclass
class SerialExecutor:
    """Every stage in this process, one item after another, with `predict` as the model."""

    predict: Predict

    def ready(self) -> None:
        return None

    def slots(self) -> int:
        return 1  # one item after another

    def plan_buckets(self, work: list[PartitionWork], s: SegmentSettings,
                     roots: tuple[str, ...]) -> Iterator[BucketSummary]:
        return merge_by_bucket((scan_stage(w, s, roots) for w in work), s)

    def segment_volumes(self, buckets: list[int], s: SegmentSettings, volumes: int) -> Iterator[VolumeDone]:
        for bucket in buckets:
            for planned in volumes_stage(bucket, s):
                yield segment_stage(planned, s, self.predict)

    def finish_buckets(self, buckets: list[int], s: SegmentSettings) -> Iterator[TableCounts]:
        for bucket in buckets:
            yield finish_stage(bucket, s)
