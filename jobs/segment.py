"""`unet segment`: bulk segmentation of DICOM / NIfTI archives with Ray Data.

    fan-out listing (driver, a few levels) -> per listing partition (CPU tasks): list, join with the
    last run's series_index part, read the headers of new or changed objects only, group into
    volume fragments -> merge fragments per volume bucket, plan (segment / carry / set aside)
    -> per volume to segment (CPU task): decode + preprocess, predict on a pooled predictor actor,
    threshold and post-process on the source grid, write -> volume table parts

The driver holds counters and small summaries, never a row per object or per volume. Outputs under
--output (unet_core/segmentation/layout.py):
    masks/<volume_id>.nii.gz         uint8 labels on the source voxel grid, source affine
    slices/<volume_id>.parquet       per-slice masks (unet_core.io.mask_codec encoding)
    qc/<volume_id>.png               with --qc: montage with the mask outline
    seg/<volume_id>.dcm              with --dicom-seg: DICOM SEG on the source images (DICOM volumes)
    volumes/part-*.parquet           the volume table: one row per volume and per unusable object
    series_index/part-*.parquet      every object: what it is, which volume it went to, or why not
    records/ok|error/<volume_id>.parquet  completion records, written last
    layout.json, summary.json
A re-run reads the headers of new or changed objects only, and segments only volumes that are new,
changed (an object added, replaced or removed) or failed last time; --overwrite redoes everything.
Exit status: 0 when every volume succeeded, 3 when some failed (all others still written), 2 for a
usage error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import psutil

from jobs.exits import Exit, run_main
from jobs.nodes import check_before_the_summary
from jobs.options import (
    add_dicomweb_args,
    add_limit_args,
    add_output_args,
    add_ray_args,
    apply_dicomweb_args,
    apply_output_args,
    dicomweb_inputs,
    limits_from,
    load_config_file,
    parse_with_config,
)
from jobs.output import configure as configure_output
from jobs.output import log, safe, say
from jobs.plan_view import plan_only
from jobs.predictors import Predictors, predict_with
from jobs.progress import Progress, Timer
from jobs.runtime import cluster_address, init_ray
from jobs.send import deliver
from jobs.send import report as report_sent
from unet_core import ownership
from unet_core.bundle import bundle_identity, read_info
from unet_core.config import from_dict, to_dict
from unet_core.errors import ConfigError, InputError
from unet_core.io import dicomweb, listing, storage
from unet_core.io.lease import Lease
from unet_core.recipe.postprocess import resolve_postprocess
from unet_core.report import segment_report
from unet_core.segmentation import choosing, planning, sizing
from unet_core.segmentation import layout as lay
from unet_core.segmentation.records import Action, Fragment, PlannedVolume, Status
from unet_core.segmentation.selection import SelectionRules
from unet_core.segmentation.settings import SegmentSettings
from unet_core.segmentation.stages import Outcome, segment_volume
from unet_core.segmentation.summary import RunSummary
from unet_core.segmentation.tables import BucketSummary, TableCounts, demote_bucket, plan_bucket, read_plan

EXIT_SOME_FAILED = Exit.SOME_FAILED
INLINE_RESULT_BYTES = 1024  # task results under this size would live in the driver (docs/design.md, "Driver memory")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unet segment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True,
                   help="prefixes or files: DICOM (any layout), NIfTI, .zip exports; or a PACS: dicomweb+https://host/path")
    p.add_argument("--model", required=True, help="model bundle (local or s3://)")
    p.add_argument("--output", required=True, help="output prefix (local or s3://)")
    p.add_argument("--config", help="JSON/YAML file of option values")
    p.add_argument("--batch-size", type=int, default=16, help="slices per model call")
    p.add_argument("--concurrency", type=int, default=None, help="predictor actors (sets both --min- and --max-predictors)")
    p.add_argument("--min-predictors", type=int, default=1, help="predictor actors started at once")
    p.add_argument("--max-predictors", type=int, default=None,
                   help="grow the pool up to this many while every predictor is busy (default: --min-predictors); "
                        "on a cluster the autoscaler adds the nodes")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs per predictor actor")
    p.add_argument("--prediction-attempts", type=int, default=3,
                   help="a volume whose prediction fails (or kills its predictor) this often becomes an error row")
    p.add_argument("--decode-concurrency", type=int, default=None,
                   help="at most this many volumes in flight (decoding, waiting for a predictor, writing); "
                        "default: the local instance's CPUs not held by predictors; on a cluster, no cap")
    p.add_argument("--precision", default="float32", choices=["float32", "mixed_float16", "mixed_bfloat16"])
    p.add_argument("--xla", action="store_true")
    p.add_argument("--threshold", type=float, default=None, help="override the bundle's threshold")
    p.add_argument("--largest-component", nargs="?", const="on", default="auto", choices=["auto", "on", "off"],
                   help="keep only the largest 3D connected component per label: auto (default) follows the "
                        "bundle's decision, taken by `unet train` on the validation cases; on; off")
    p.add_argument("--tta", default="none", choices=["none", "flip"],
                   help="flip: average the 4 mirrored passes of each slice (4x the model's work; native recipe "
                        "and seed recipe alike)")
    p.add_argument("--fill-holes", action="store_true", help="fill holes in 3D per label")
    p.add_argument("--qc", action="store_true", help="write a PNG montage per volume")
    p.add_argument("--dicom-seg", action="store_true",
                   help="also write a DICOM SEG per DICOM volume (seg/<volume_id>.dcm), referencing the source "
                        "images; it carries the source's patient and study modules, as PACS need, even without "
                        "--keep-phi (the tables stay free of identifiers)")
    p.add_argument("--keep-phi", action="store_true", help="keep patient name, ID and birth date in the outputs")
    p.add_argument("--assume-modality", default=None, metavar="MODALITY",
                   help="the modality of inputs whose format does not say (NIfTI), e.g. CT: then the model's "
                        "modality check and the HU statistics apply to them")
    p.add_argument("--keep-localizers", action="store_true",
                   help="segment localizer / scout images too (ImageType LOCALIZER); by default they are "
                        "skipped with reason 'localizer'")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="follow directory symlinks of a local archive (loops are detected by real path)")
    p.add_argument("--overwrite", action="store_true", help="redo every volume, and read every header again")
    g = p.add_argument_group("choosing what to segment (README: \"Choosing what to segment\")")
    g.add_argument("--select", default=None, metavar="FILE.yaml",
                   help="selection rules (modality, image_type_includes, orientation, slice_thickness_mm, "
                        "one_per_study, ...): they replace the bundle's input_rules key by key; in --config, "
                        "a mapping under 'select'")
    g.add_argument("--plan-only", action="store_true",
                   help="list, scan and plan as a run would (incremental), load no model, write plan.parquet "
                        "and print what a run would do")
    g.add_argument("--limit", type=int, default=None, metavar="N",
                   help="segment at most N of the selected volumes (the same N on every run: by volume id hash)")
    g.add_argument("--sample", type=float, default=None, metavar="FRACTION",
                   help="segment this fraction of the selected volumes (by volume id hash; e.g. 0.01)")
    g.add_argument("--seed", type=int, default=0, help="of --limit and --sample")
    add_dicomweb_args(p)
    add_output_args(p)
    add_ray_args(p)
    add_limit_args(p)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


# ---- stage wiring (each body is a domain function; these only unpack Ray batches) ---------------
def scan_partitions(batch: dict, settings: dict, roots: list[str]) -> dict:
    """A block of listing partitions -> their volume fragments (the scan counts ride on each
    partition's first fragment: records.Fragment)."""

    s = from_dict(SegmentSettings, settings)
    frags = []
    for partition, units_json in zip(batch["partition"], batch["units"], strict=True):
        units = [planning.Unit(u, r) for u, r in json.loads(units_json)]
        frags += planning.index_partition(int(partition), units, s, tuple(roots))[0]
    import pyarrow as pa

    return pa.Table.from_pylist([f.to_row() for f in frags], schema=Fragment.arrow_schema())


def merge_bucket(group, settings: dict):
    """All fragments of one volume bucket -> its plan (kept in storage) and its BucketSummary."""
    import pyarrow as pa


    frags = [Fragment.from_row(r) for r in group.to_pylist()]
    summary = plan_bucket(frags[0].bucket, frags, from_dict(SegmentSettings, settings))
    return pa.Table.from_pylist([asdict(summary)])


def plan_to_segment(row: dict, settings: dict) -> list[dict]:
    s = from_dict(SegmentSettings, settings)
    return [p.to_row() for p in read_plan(s.output, int(row["bucket"]), Action.SEGMENT)]


def segment_row(row: dict, settings: dict, pool) -> dict:
    s = from_dict(SegmentSettings, settings)
    rec, outcome = segment_volume(PlannedVolume.from_row(row), s, predict_with(pool, s.prediction_attempts))
    return {"status": rec.status.value, "n_slices": rec.n_slices, "outcome": outcome.value,
            "sent": outcome == Outcome.DONE and bool(rec.sent)}


def finish_bucket(row: dict, settings: dict) -> dict:
    from unet_core.segmentation.tables import finish_bucket as finish

    return {"bucket": row["bucket"], "counts": finish(int(row["bucket"]), from_dict(SegmentSettings, settings)).to_json()}


# ---- the job ----------------------------------------------------------------------------------------
@dataclass
class Planned:
    """What planning tells the driver: bounded by the layout's buckets, never by the archive."""

    settings: SegmentSettings
    layout: lay.Layout
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


@dataclass
class Segmented:
    segmented: int = 0
    resumed: int = 0
    slices: int = 0
    failed: int = 0
    sent: int = 0  # SEGs stored by the volume tasks (--send-seg)
    predictor_wait: float = 0.0
    seconds: float = 0.0
    pool_stats: dict = field(default_factory=dict)


def main(argv: list[str]) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    args = parse_with_config(build_parser(), argv)
    configure_output(args.verbose)
    apply_output_args(args)

    info = read_info(args.model)
    selection_rules(args, info)  # a rule that cannot be read fails here, before anything is listed (exit 2)
    args.input = dicomweb_inputs(args)
    if args.send_seg:
        args.send_seg, args.dicom_seg = dicomweb.destination(args.send_seg), True
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be at least 1")
    if args.sample is not None and not 0 < args.sample <= 1:
        raise ConfigError("--sample must be a fraction in (0, 1]")
    out = storage.absolute(args.output)
    low, high = sizing.predictor_counts(args.concurrency, args.min_predictors, args.max_predictors)
    # Task results under this size are returned into the driver's own memory instead of the object
    # store; the shuffle's many small blocks would then grow the driver with the archive
    # (docs/design.md, "Driver memory"). Read by the processes of a local instance; a cluster sets
    # it on its nodes (cluster/).
    os.environ.setdefault("RAY_max_direct_call_object_size", str(INLINE_RESULT_BYTES))
    apply_dicomweb_args(args, [i for i in args.input if dicomweb.is_dicomweb(i)] + [args.send_seg or ""][:bool(args.send_seg)])
    storage.probe_writable(out)  # before anything is read: a refused output fails now (exit 5)
    timer = Timer()
    with Lease(out, "unet segment") as lease:  # one writer per output
        if lease.took_over:
            say(f"took over the output from a run that is gone: {lease.took_over.describe(time.time())}")
        inputs, layout = _prepare_output(args, out)
        init_ray(args.address, args.num_cpus or sizing.local_cpus(os.cpu_count() or 1, low, args.num_gpus),
                 verbose=args.verbose)
        with Predictors(args.model, args.batch_size, args.precision, args.xla, low, high, args.num_gpus) as pool:
            if layout is None and not args.plan_only:
                pool.start()  # a first run: the predictors load while the archive is listed and scanned
            planned = plan(args, info, inputs, out, layout, low, timer)
            if args.plan_only:  # no model is loaded
                return plan_only(planned, out, high)
            segmented = segment(args, planned, pool, low)
        return finish(args, info, planned, segmented, timer)


def _prepare_output(args, out: str) -> tuple[tuple[str, ...], lay.Layout | None]:
    """The inputs as the layout names them, and the last run's layout when it can be reused. The
    output must be this tool's (or empty); only objects it names are removed (ownership.py)."""
    inputs = tuple(storage.absolute(i) for i in args.input)
    ownership.check_inputs(inputs, out)
    ownership.check_output(out, ownership.SEGMENT_OUTPUT)
    if swept := storage.sweep_temporaries(out):
        log.info("removed %d unfinished temporary files of an interrupted run under %s", swept, out)
    layout = None if args.overwrite else lay.read_layout(out)
    if layout is not None and layout.inputs != inputs:
        log.info("the inputs differ from the last run's (%s): every header is read again", ", ".join(layout.inputs))
        layout = None
    folders = ownership.OVERWRITE_FOLDERS if args.overwrite else ("series_index", "volumes", "plan")
    removed, left = ownership.delete_owned(out, folders if layout is None else ("plan",))  # plan: an interrupted run's
    if left:
        say(f"left {left} objects in the output's folders that this tool did not write (-v lists them)")
    log.debug("removed %d objects of earlier runs", removed)
    return inputs, layout


def _settings(args, info, out: str, layout: lay.Layout) -> SegmentSettings:
    return SegmentSettings(
        output=out, bundle_info=info.to_json(), model_name=info.name, model_identity=bundle_identity(args.model),
        threshold=args.threshold if args.threshold is not None else info.threshold,
        modality="CT" if info.preprocess.modality == "CT" else None, limits=limits_from(args),
        largest_component=resolve_postprocess(info, args.largest_component).largest_component,
        fill_holes=args.fill_holes, tta=args.tta == "flip", qc=args.qc, dicom_seg=args.dicom_seg,
        keep_phi=args.keep_phi, keep_localizers=args.keep_localizers, assume_modality=args.assume_modality,
        follow_symlinks=args.follow_symlinks, resume=not args.overwrite, prediction_attempts=args.prediction_attempts,
        partitions=layout.partitions, buckets=layout.buckets, inputs=tuple(layout.inputs),
        selection=json.dumps(selection_rules(args, info).to_dict()), sample=args.sample, limit=args.limit,
        seed=args.seed, send_seg=args.send_seg or "")


def selection_rules(args, info) -> SelectionRules:
    """The bundle's input_rules, with --select's keys (a file, or a mapping from --config) over them."""
    override = args.select
    where = "--select"
    if isinstance(override, str):
        where = override
        override = load_config_file(override)
    elif override is not None and not isinstance(override, dict):
        raise ConfigError(f"select in --config must be a mapping of rules (got {type(override).__name__})")
    return SelectionRules.from_dict(info.input_rules, "the bundle's input_rules").merged(override, where)


def _web_cap(args, n: int) -> int:
    """With a DICOMweb input, tasks that read it are at most --dicomweb-concurrency (each makes one
    request at a time): the PACS sees at most that many requests at once. 0 in: no cap but that."""
    if not (args.send_seg or any(dicomweb.is_dicomweb(i) for i in args.input)):
        return n
    return min(n, args.dicomweb_concurrency) if n else args.dicomweb_concurrency


def _task_slots(args, low: int) -> int:
    import ray

    return sizing.task_slots(ray.cluster_resources().get("CPU", 1), low, args.num_gpus)


def plan(args, info, inputs: tuple[str, ...], out: str, layout: lay.Layout | None, low: int, timer: Timer) -> Planned:
    """Listing, manifest join and header scan per listing partition; fragments merged and planned
    per volume bucket. Each bucket's plan stays in storage; the driver gets counts."""
    import ray


    units, depth = planning.fan_out(list(inputs), layout.depth if layout else None, args.follow_symlinks)
    if not units:
        raise InputError(f"no objects under {', '.join(inputs)}")
    if layout is None:
        layout = lay.Layout(inputs, depth, *lay.choose_counts(len(units)))
        storage.write_bytes(lay.layout_uri(out), layout.to_json().encode())
    settings = _settings(args, info, out, layout)
    slots = _task_slots(args, low)
    by_partition: dict[int, list] = {}
    for u in units:
        by_partition.setdefault(lay.partition_of(u.key, layout.partitions), []).append((u.prefix, u.recursive))
    parts = [{"partition": p, "units": json.dumps(by_partition.get(p, []))} for p in range(layout.partitions)]
    say(f"planning: listing {', '.join(inputs)} ({len(units):,} folders in {layout.partitions} partitions), reading "
        "new headers, grouping volumes ...")
    del units, by_partition
    log.debug("fanned out; driver RSS %s", _rss_mib())
    n_blocks = sizing.scan_blocks(len(parts), slots)
    # The task-based sort shuffle: on small inputs the hash shuffle's aggregator actors cost seconds
    # to start. It takes few blocks: its work and the objects the driver owns grow with the square
    # of their number (docs/design.md, "Grouping: why fragments and a shuffle by volume bucket").
    ray.data.DataContext.get_current().shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    cfg = to_dict(settings)
    scanned = (ray.data.from_items(parts, override_num_blocks=n_blocks)
               .map_batches(scan_partitions, fn_kwargs={"settings": cfg, "roots": list(listing.real_roots(list(inputs)))},
                            batch_size=None, compute=ray.data.TaskPoolStrategy(size=_web_cap(args, min(slots, n_blocks)))))
    if n_blocks > sizing.SHUFFLE_BLOCKS:
        scanned = scanned.repartition(sizing.SHUFFLE_BLOCKS)
    summaries = (scanned.groupby("bucket", num_partitions=max(1, min(layout.buckets, 2 * slots)))
                 .map_groups(merge_bucket, fn_kwargs={"settings": cfg}, batch_format="pyarrow"))
    planned = Planned(settings, layout)
    counts: dict[int, TableCounts] = {}
    todo: dict[int, int] = {}
    found: dict[int, dict] = {}
    for r in summaries.iter_rows():  # one row per bucket: bounded by the layout, not the archive
        b = BucketSummary(**r)
        planned.listed, planned.reused, planned.scanned = (planned.listed + b.listed, planned.reused + b.reused,
                                                           planned.scanned + b.scanned)
        planned.seen.add(b.bucket)
        counts[b.bucket], todo[b.bucket] = TableCounts.from_json(b.counts), b.todo
        found[b.bucket] = json.loads(b.contenders)
    if not planned.listed:
        raise InputError(f"no objects under {', '.join(inputs)}")
    # The run-wide choices: one_per_study over studies spread across buckets, and --limit.
    for bucket, demotion in choosing.decide(settings, found).items():
        counts[bucket], todo[bucket] = demote_bucket(bucket, demotion, settings)
    for c in counts.values():
        planned.totals.add(c)
    planned.pending = [(b, n) for b, n in sorted(todo.items()) if n]
    log.debug("planned; driver RSS %s", _rss_mib())
    planned.seconds = timer.seconds
    say(f"planning: {planned.listed:,} objects listed ({planned.scanned:,} headers read, {planned.reused:,} "
        f"unchanged) in {planned.seconds:.0f}s; {planned.todo:,} volumes to segment")
    return planned


def segment(args, planned: Planned, predictors: Predictors, low: int) -> Segmented:
    """Decode -> predict -> finish and write, streaming, for every volume the plan marks."""
    import ray

    done, t = Segmented(), Timer()
    if not planned.todo:
        return done
    predictors.ready()
    done.predictor_wait = t.seconds  # start-up the scan did not hide
    cfg = to_dict(planned.settings)
    slots = _task_slots(args, low)
    in_flight = sizing.volume_slots(args.decode_concurrency, cluster_address(args.address) is not None, slots,
                                    planned.todo)
    in_flight = _web_cap(args, in_flight or 0) or None
    buckets = [{"bucket": b} for b, _ in planned.pending]
    todo = (ray.data.from_items(buckets, override_num_blocks=len(buckets))
            .flat_map(plan_to_segment, fn_kwargs={"settings": cfg})
            .repartition(sizing.segment_blocks(planned.todo, in_flight or int(ray.cluster_resources().get("CPU", 1)))))
    records = todo.map(segment_row, fn_kwargs={"settings": cfg, "pool": predictors.pool}, num_cpus=1,
                       compute=ray.data.TaskPoolStrategy(size=in_flight))
    with Progress("segment", planned.todo, "volumes", rate_unit="slices") as progress:
        for r in records.iter_rows():
            if r["outcome"] == Outcome.RESUMED:
                done.resumed += 1
            else:
                done.segmented += 1
                done.slices += int(r["n_slices"] or 0)
            done.failed += r["status"] != Status.OK
            done.sent += bool(r["sent"])
            progress.update(done.segmented + done.resumed, done.failed, done.slices)
    done.pool_stats = predictors.stats()
    done.seconds = t.seconds
    log.debug("segmented; driver RSS %s", _rss_mib())
    return done


def finish(args, info, planned: Planned, done: Segmented, timer: Timer) -> int:
    """The table parts of the buckets that had volumes to segment (parts of buckets that no longer
    hold a volume go), summary.json, the report, and what the user sees."""
    import ray

    check_before_the_summary()  # a node lost in the last seconds is still said
    out, totals = planned.settings.output, planned.totals
    if planned.pending:
        for r in ray.data.from_items([{"bucket": b} for b, _ in planned.pending]).map(
                finish_bucket, fn_kwargs={"settings": to_dict(planned.settings)}).iter_rows():
            totals.add(TableCounts.from_json(r["counts"]))
    for b in set(range(planned.layout.buckets)) - planned.seen:
        storage.delete(lay.volume_part_uri(out, b))
    ownership.delete_owned(out, ("plan",))  # nothing is left there now; a local run's empty folder goes
    # SEGs not stored yet (sent inline as written; these failed then, or are an earlier run's)
    sent = deliver(out, planned.layout.buckets, args.send_seg, args.dicomweb_concurrency) if args.send_seg else None
    summary = RunSummary(
        output=out, model=info.name, model_identity=planned.settings.model_identity,
        finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        volumes_ok=totals.by_status.get(Status.OK, 0), volumes_failed=totals.by_status.get(Status.ERROR, 0),
        objects_skipped=totals.by_status.get(Status.SKIPPED, 0) - sum(totals.not_selected.values()),
        failures_by_type=dict(totals.by_error_type), volumes_not_selected=sum(totals.not_selected.values()),
        not_selected_by_rule=dict(totals.not_selected), selection=planned.settings.rules.to_dict(),
        sample=args.sample, limit=args.limit, seed=args.seed,
        volume_table_parts_written=totals.parts_written, objects_listed=planned.listed,
        headers_read=planned.scanned, headers_unchanged=planned.reused, segmented_now=done.segmented,
        resumed_from_records=done.resumed, slices_now=done.slices,
        slices_per_second=done.slices / max(done.seconds, 1e-9), scan_seconds=planned.seconds,
        predictor_wait_seconds=done.predictor_wait, pipeline_seconds=done.seconds, total_seconds=timer.seconds,
        predictors_started=done.pool_stats.get("predictors_started", 0),
        predictors_live=done.pool_stats.get("predictors_live", 0), dicom_seg=args.dicom_seg, qc=args.qc,
        keep_phi=args.keep_phi, sent_to=args.send_seg or "", segs_sent=done.sent + (sent.sent if sent else 0),
        segs_send_failed=sent.failed if sent else 0)
    summary.write()

    report = segment_report(out, summary)
    print(f"segmented {done.segmented} volumes ({done.slices} slices, {summary.slices_per_second:.1f} slices/s) "
          f"in {timer.seconds:.0f}s; {summary.volumes_ok} ok, {summary.volumes_failed} failed, "
          + (f"{summary.volumes_not_selected} not selected, " if summary.volumes_not_selected else "")
          + f"{summary.objects_skipped} objects skipped; {planned.listed} objects listed, {planned.scanned} headers "
          f"read -> {out}")
    if summary.not_selected_by_rule:
        print("  not selected, by rule: " + ", ".join(f"{k} {v}" for k, v in totals.not_selected.most_common()))
    print(safe(f"  report: {report}"))
    if done.resumed:
        print(f"  {done.resumed} already complete (recorded by an interrupted run; not redone)")
    for vid, error in totals.failures:
        print(safe(f"  failed: {vid}: {error}"))
    if summary.volumes_failed > len(totals.failures):
        print(f"  ... {summary.volumes_failed - len(totals.failures)} more; see {out}/volumes/")
    if totals.by_error_type:
        print("  failures by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.by_error_type.items())))
    if sent is not None:
        sent.sent += done.sent
        sent.already -= done.sent  # sent by this run's volume tasks, then found stored by the pass above
        report_sent(sent, args.send_seg)
    return EXIT_SOME_FAILED if summary.volumes_failed or summary.segs_send_failed else Exit.OK


def _rss_mib() -> str:
    m = psutil.Process().memory_full_info()
    return f"{m.rss / 2**20:.0f} MiB (unique {m.uss / 2**20:.0f}, shared {m.shared / 2**20:.0f})"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
