"""`unet segment`: bulk segmentation of DICOM / NIfTI archives with Ray Data.

    fan-out listing (driver, a few levels) -> per listing partition (CPU tasks): list, join with the
    last run's series_index part, read the headers of new or changed objects only, group into
    volume fragments -> merge fragments per volume bucket, plan (segment / carry / set aside)
    -> per volume to segment (CPU task): decode + preprocess, predict on a pooled predictor actor,
    threshold and post-process on the source grid, write -> volume table parts

The run and its decisions are unet_core/segmentation/run.py; this module parses the arguments, starts
Ray and the predictor pool (jobs/ray_executor.py) and prints. The driver holds counters and small
summaries, never a row per object or per volume. Outputs under
--output (unet_core/segmentation/store.py):
    masks/<volume_id>.nii.gz         uint8 labels on the source voxel grid, source affine
    slices/<volume_id>.parquet       per-slice masks (unet_core.io.mask_codec encoding)
    qc/<volume_id>.png               with --qc: montage with the mask outline
    seg/<volume_id>.dcm              with --dicom-seg: DICOM SEG on the source images (DICOM volumes)
    rtstruct/<volume_id>.dcm         with --rtstruct: DICOM RT Structure Set on the source images (DICOM volumes)
    volumes/part-*.parquet           the volume table: one row per volume and per object set aside
    series_index/part-*.parquet      every object: what it is, which volume it went to, or why not
    records/ok|error/<volume_id>.parquet  completion records, written last
    layout.json, summary.json
A re-run reads the headers of new or changed objects only, and segments only volumes that are new,
changed (an object added, replaced or removed) or failed last time; --overwrite redoes everything.
A re-run is first planned in this process (SegmentRun.plan_unchanged): when nothing changed and
nothing is to be segmented, no Ray instance starts.
Exit status: 0 when every volume succeeded, 3 when some failed (all others still written), 2 for a
usage error.
"""
from __future__ import annotations

import os
import sys
import time

from jobs import segment_args
from jobs.exits import Exit, run_main
from jobs.nodes import check_before_the_summary
from jobs.options import (
    apply_dicomweb_args,
    apply_output_args,
    dicomweb_inputs,
    parse_with_config,
)
from jobs.output import configure as configure_output
from jobs.output import log, say
from jobs.plan_view import plan_only
from jobs.predictors import Predictors
from jobs.progress import Progress, Timer
from jobs.ray_executor import RayExecutor
from jobs.runtime import cluster_address, init_ray
from jobs.segment_args import selection_rules, settings_of, web_cap
from jobs.segment_view import print_outcome, rss_mib
from jobs.send import deliver_progress
from unet_core import registry
from unet_core.bundle import read_info, resolve
from unet_core.errors import ConfigError
from unet_core.io import dicomweb, storage
from unet_core.io.lease import Lease
from unet_core.report import segment_report
from unet_core.segmentation import sizing
from unet_core.segmentation.run import Pool, Segmented, SegmentRun, open_output, summarise
from unet_core.segmentation.store import OutputStore

EXIT_SOME_FAILED = Exit.SOME_FAILED
INLINE_RESULT_BYTES = 1024  # task results under this size would live in the driver (docs/design.md, "Driver memory")


def build_parser():
    return segment_args.build_parser(__doc__)


def main(argv: list[str]) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    args = parse_with_config(build_parser(), argv)
    configure_output(args.verbose)
    apply_output_args(args)

    model = args.model  # as given: a registered model is recorded by its reference
    if registry.is_model_uri(model):
        # Every process of the job reads the registry from MLFLOW_TRACKING_URI (a cluster's nodes
        # get it with the job's settings: jobs/runtime.py); credentials stay MLflow's own variables.
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        if cluster_address(args.address) is None:  # a local instance's workers read the driver's checked copy
            args.model = resolve(model)
    info = read_info(args.model)
    selection_rules(args, info)  # a rule that cannot be read fails here, before anything is listed (exit 2)
    args.input = dicomweb_inputs(args)
    if args.send_seg:
        # --send-seg's meaning kept: a SEG, unless the run asks for RTSTRUCTs only
        args.send_seg, args.dicom_seg = dicomweb.destination(args.send_seg), args.dicom_seg or not args.rtstruct
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
        store = OutputStore(out, lease.fence())  # its writes and deletes stop once the lease is lost
        if lease.took_over:
            say(f"took over the output from a run that is gone: {lease.took_over.describe(time.time())}")
        inputs = tuple(storage.absolute(i) for i in args.input)
        opened = open_output(store, inputs, args.overwrite, check=lease.check)
        if opened.swept:
            log.info("removed %d unfinished temporary files of an interrupted run under %s", opened.swept, out)
        if opened.other_inputs:
            log.info("the inputs differ from the last run's (%s): every header is read again",
                     ", ".join(opened.other_inputs))
        if opened.left:
            say(f"left {opened.left} objects in the output's folders that this tool did not write (-v lists them)")
        log.debug("removed %d objects of earlier runs", opened.removed)
        run = SegmentRun(store)
        if opened.layout is not None:  # a re-run with nothing to do is planned here and starts no cluster
            units, layout = run.layout(inputs, opened.layout, args.follow_symlinks)
            settings = settings_of(args, info, out, layout, lease, model)
            say_planning(inputs, units, layout)
            planned = run.plan_unchanged(units, settings, layout, started=timer.start)
            if planned is not None:
                say_planned(planned)
                return plan_only(planned, out, high) if args.plan_only else \
                    finish(args, run, planned, Segmented(), Pool(), timer)
        init_ray(args.address, args.num_cpus or sizing.local_cpus(os.cpu_count() or 1, low, args.num_gpus),
                 verbose=args.verbose)
        with Predictors(args.model, args.batch_size, args.precision, args.xla, low, high, args.num_gpus) as pool:
            if opened.layout is None and not args.plan_only:
                pool.start()  # a first run: the predictors load while the archive is listed and scanned
            run.executor = RayExecutor(pool, low, args.num_gpus, args.decode_concurrency,
                                       cluster_address(args.address) is not None, lambda n: web_cap(args, n))
            if opened.layout is None:
                units, layout = run.layout(inputs, None, args.follow_symlinks)
                settings = settings_of(args, info, out, layout, lease, model)
                say_planning(inputs, units, layout)
            planned = run.plan(units, settings, layout, started=timer.start)
            say_planned(planned)
            if args.plan_only:  # no model is loaded
                return plan_only(planned, out, high)
            done, used = Segmented(), Pool()
            if planned.todo:
                ready = run.ready(planned)
                with Progress("segment", planned.todo, "volumes", rate_unit="slices") as progress:
                    done = run.segment(planned, lambda d: progress.update(d.segmented + d.resumed + d.retried, d.failed, d.slices),
                                       ready)
                stats = pool.stats()
                used = Pool(stats.get("predictors_started", 0), stats.get("predictors_live", 0))
        return finish(args, run, planned, done, used, timer)


def say_planning(inputs, units, layout) -> None:
    say(f"planning: listing {', '.join(inputs)} ({len(units):,} folders in {layout.partitions} partitions), "
        "reading new headers, grouping volumes ...")


def say_planned(planned) -> None:
    log.debug("planned; driver RSS %s", rss_mib())
    say(f"planning: {planned.listed:,} objects listed ({planned.scanned:,} headers read, {planned.reused:,} "
        f"unchanged) in {planned.seconds:.0f}s; {planned.todo:,} volumes to segment")


def finish(args, run: SegmentRun, planned, done: Segmented, pool: Pool, timer: Timer) -> int:
    """Table parts, delivery, summary.json, the report, and what the user sees."""
    check_before_the_summary()  # a node lost in the last seconds is still said
    log.debug("segmented; driver RSS %s", rss_mib())
    totals = run.finish(planned)
    sent = None
    if args.send_seg:
        with deliver_progress(planned.layout.buckets) as seen:
            sent = run.deliver(planned, args.dicomweb_concurrency, seen)
    summary = summarise(planned, done, totals, sent, pool, timer.seconds)
    summary.write()
    report = segment_report(planned.settings.output, summary)
    return print_outcome(planned, done, totals, summary, sent, report, timer.seconds)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
