"""The segment run's executor on Ray Data (unet_core/segmentation/executor.py states the
interface; each function here unpacks a Ray batch or row and calls one stage function):

    plan_buckets      listing partitions -> map_batches(scan) on a task pool -> groupby(bucket)
                      (the task-based sort shuffle) -> map_groups(merge) -> one row per bucket
    segment_volumes   buckets -> map_batches(volumes of their plans) -> repartition -> map(segment)
                      with at most `in flight` tasks, each predicting on the pooled predictor actors
    finish_buckets    buckets -> map_batches(finish)

Settings cross to the workers as `to_dict(settings)` and are rebuilt there (`worker_settings`), where
their storage settings (retries, file mode) become the worker's before the stage runs.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Callable, Iterator

from jobs.predictors import Predictors, predict_with
from unet_core.config import from_dict, to_dict
from unet_core.errors import UnetError
from unet_core.segmentation import executor as ex
from unet_core.segmentation import planning, sizing
from unet_core.segmentation.records import Fragment, PlannedVolume, Status
from unet_core.segmentation.settings import SegmentSettings
from unet_core.segmentation.stages import Outcome
from unet_core.segmentation.tables import BucketSummary, TableCounts


def domain_error(exc: BaseException) -> UnetError | None:
    """The project's own error inside Ray's wrapping of a task's exception (RayTaskError, Ray Data's
    UserCodeException), if there is one."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, UnetError) and not type(e).__module__.startswith("ray"):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


@contextlib.contextmanager
def as_domain_errors() -> Iterator[None]:
    """A domain error raised in a task (LeaseLost, a storage error past its retries) reaches the
    job as itself, so the job's exit status is its own (exits.run_main), not an internal error's."""
    try:
        yield
    except Exception as exc:
        found = domain_error(exc)
        if found is None or found is exc:
            raise
        raise found from exc


# ---- stage wiring (each body is a stage function of executor.py) ------------------------------------
def worker_settings(cfg: dict) -> SegmentSettings:
    """The run's settings, rebuilt in a worker; its storage settings made the worker's."""
    s = from_dict(SegmentSettings, cfg)
    s.storage.apply()
    return s


def scan_partitions(batch: dict, settings: dict, roots: list[str]):
    """A block of listing partitions -> their volume fragments (the scan counts ride on each
    partition's first fragment: records.Fragment)."""
    import pyarrow as pa

    s = worker_settings(settings)
    frags = []
    for partition, units_json in zip(batch["partition"], batch["units"], strict=True):
        work = ex.PartitionWork(int(partition), tuple(planning.Unit(u, r) for u, r in json.loads(units_json)))
        frags += ex.scan_stage(work, s, tuple(roots))
    return pa.Table.from_pylist([f.to_row() for f in frags], schema=Fragment.arrow_schema())


def merge_bucket(group, settings: dict):
    """All fragments of one volume bucket -> its plan (kept in the store) and its BucketSummary."""
    import pyarrow as pa

    frags = [Fragment.from_row(r) for r in group.to_pylist()]
    summary = ex.merge_stage(frags, worker_settings(settings))
    return pa.Table.from_pylist([summary.to_row()], schema=BucketSummary.arrow_schema())


def plans_to_segment(batch: dict, settings: dict):
    """A block of planned buckets -> their volumes to segment, in PlannedVolume's schema (members,
    record and facts as nested columns, never inferred from the first rows)."""
    import pyarrow as pa

    s = worker_settings(settings)
    rows = [p.to_row() for b in batch["bucket"] for p in ex.volumes_stage(int(b), s)]
    return pa.Table.from_pylist(rows, schema=PlannedVolume.arrow_schema())


def segment_row(row: dict, settings: dict, pool) -> dict:
    s = worker_settings(settings)
    done = ex.segment_stage(PlannedVolume.from_row(row), s, predict_with(pool, s.prediction_attempts))
    return {"status": done.status.value, "n_slices": done.n_slices, "outcome": done.outcome.value, "sent": done.sent,
            "internal": done.internal, "rtstructs_sent": done.rtstructs_sent}


def finish_buckets(batch: dict, settings: dict):
    """A block of segmented buckets -> their table parts written, and their counts (TableCounts rows)."""
    import pyarrow as pa

    s = worker_settings(settings)
    rows = [ex.finish_stage(int(b), s).to_row() for b in batch["bucket"]]
    return pa.Table.from_pylist(rows, schema=TableCounts.arrow_schema())


@dataclass
class RayExecutor:
    """The stages on the Ray instance `init_ray` attached to. `predictors` is the pool of predictor
    actors; `web_cap(n)` caps the tasks that talk to a DICOMweb service; `in_flight` is
    --decode-concurrency; `on_cluster` whether an address was given."""

    predictors: Predictors
    low: int  # predictor actors started at once
    num_gpus: float
    in_flight: int | None
    on_cluster: bool
    web_cap: Callable[[int], int]

    def ready(self) -> None:
        self.predictors.ready()

    def slots(self) -> int:
        import ray

        return sizing.task_slots(ray.cluster_resources().get("CPU", 1), self.low, self.num_gpus)

    def plan_buckets(self, work: list[ex.PartitionWork], s: SegmentSettings, roots: tuple[str, ...]):
        import ray

        slots = self.slots()
        parts = [{"partition": w.partition, "units": json.dumps([(u.prefix, u.recursive) for u in w.units])}
                 for w in work]
        n_blocks = sizing.scan_blocks(len(parts), slots)
        # The task-based sort shuffle: on small inputs the hash shuffle's aggregator actors cost seconds
        # to start. It takes few blocks: its work and the objects the driver owns grow with the square
        # of their number (docs/design.md, "Grouping: why fragments and a shuffle by volume bucket").
        ray.data.DataContext.get_current().shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        cfg = to_dict(s)
        scanned = (ray.data.from_items(parts, override_num_blocks=n_blocks)
                   .map_batches(scan_partitions, fn_kwargs={"settings": cfg, "roots": list(roots)}, batch_size=None,
                                compute=ray.data.TaskPoolStrategy(size=self.web_cap(min(slots, n_blocks)))))
        if n_blocks > sizing.SHUFFLE_BLOCKS:
            scanned = scanned.repartition(sizing.SHUFFLE_BLOCKS)
        summaries = (scanned.groupby("bucket", num_partitions=max(1, min(s.buckets, 2 * slots)))
                     .map_groups(merge_bucket, fn_kwargs={"settings": cfg}, batch_format="pyarrow"))
        with as_domain_errors():
            for r in summaries.iter_rows():
                yield BucketSummary.from_row(dict(r))

    def segment_volumes(self, buckets: list[int], s: SegmentSettings, volumes: int):
        import ray

        cfg = to_dict(s)
        in_flight = sizing.volume_slots(self.in_flight, self.on_cluster, self.slots(), volumes)
        in_flight = self.web_cap(in_flight or 0) or None
        todo = (ray.data.from_items([{"bucket": b} for b in buckets], override_num_blocks=len(buckets))
                .map_batches(plans_to_segment, fn_kwargs={"settings": cfg}, batch_size=1)
                .repartition(sizing.segment_blocks(volumes, in_flight or int(ray.cluster_resources().get("CPU", 1)))))
        records = todo.map(segment_row, fn_kwargs={"settings": cfg, "pool": self.predictors.pool}, num_cpus=1,
                           compute=ray.data.TaskPoolStrategy(size=in_flight))
        with as_domain_errors():
            for r in records.iter_rows():
                yield ex.VolumeDone(Status(r["status"]), int(r["n_slices"] or 0), Outcome(r["outcome"]),
                                    int(r["sent"] or 0), int(r["rtstructs_sent"] or 0), bool(r.get("internal")))

    def finish_buckets(self, buckets: list[int], s: SegmentSettings):
        import ray

        with as_domain_errors():
            for r in ray.data.from_items([{"bucket": b} for b in buckets]).map_batches(
                    finish_buckets, fn_kwargs={"settings": to_dict(s)}, batch_size=1).iter_rows():
                yield TableCounts.from_row(dict(r))
