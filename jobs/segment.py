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

from jobs.exits import Exit, run_main
from jobs.options import add_limit_args, add_ray_args, limits_from, parse_with_config
from jobs.output import configure as configure_output
from jobs.output import log, say
from jobs.progress import Progress, Timer
from jobs.runtime import cluster_address, init_ray
from unet_core.config import from_dict, to_dict
from unet_core.errors import ConfigError, InputError
from unet_core.io import storage
from unet_core.segmentation import layout as lay
from unet_core.segmentation.settings import SegmentSettings

EXIT_SOME_FAILED = Exit.SOME_FAILED
SCAN_PARTITIONS_PER_BLOCK = 8  # listing partitions a scan task takes on: tasks of a few ms each cost more than they do
SCAN_BLOCKS_PER_SLOT = 8  # at most this many scan tasks per task slot (each one's output is a block of the shuffle)
SHUFFLE_BLOCKS = 16  # blocks into the sort shuffle: its cost and its objects grow as blocks squared (docs/design.md)
SCAN_COUNTS = ("listed", "reused", "scanned")
INLINE_RESULT_BYTES = 1024
VOLUMES_PER_TASK = 32  # on large runs: each segment task costs the driver ~100 KB of RSS and ~12 ms
MAX_SEGMENT_TASKS = 1024  # beyond it tasks take more volumes each: the driver's share stays bounded


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unet segment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="prefixes or files: DICOM (any layout), NIfTI, .zip exports")
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
    p.add_argument("--largest-component", action="store_true", help="keep the largest 3D connected component per label")
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
    add_ray_args(p)
    add_limit_args(p)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


# ---- stage wiring (each body is a domain function; these only unpack Ray batches) ---------------
def scan_partitions(batch: dict, settings: dict, roots: list[str]) -> dict:
    """A block of listing partitions -> their volume fragments, plus one counts row per partition."""
    from unet_core.segmentation import planning

    s = from_dict(SegmentSettings, settings)
    out: dict[str, list] = {k: [] for k in ("volume_id", "bucket", "members", "partition", "fingerprint", *SCAN_COUNTS)}
    for partition, units_json in zip(batch["partition"], batch["units"], strict=True):
        units = [planning.Unit(u, r) for u, r in json.loads(units_json)]
        frags, counts = planning.index_partition(int(partition), units, s, tuple(roots))
        for key, blank in (("volume_id", ""), ("bucket", -1), ("members", ""), ("partition", -1), ("fingerprint", "")):
            out[key] += [getattr(f, key) for f in frags] + [blank]
        for key in SCAN_COUNTS:
            out[key] += [0] * len(frags) + [getattr(counts, key)]
    return out


def merge_bucket(group, settings: dict):
    """All fragments of one volume bucket -> its plan (kept in storage) and one summary row. The
    counts rows of the scan arrive as bucket -1 and are summed into a summary row of their own."""
    import pyarrow as pa

    from unet_core.segmentation import planning
    from unet_core.segmentation.records import Fragment
    from unet_core.segmentation.tables import (
        IndexParts,
        TableCounts,
        read_part,
        settle_bucket,
    )

    s = from_dict(SegmentSettings, settings)
    bucket = int(group["bucket"][0].as_py())
    if bucket < 0:
        sums = {k: int(pa.compute.sum(group[k]).as_py() or 0) for k in SCAN_COUNTS}
        return pa.Table.from_pylist([{"bucket": -1, "todo": 0, "counts": TableCounts().to_json(), **sums}])
    frags = [Fragment(v, bucket, m, p, f) for v, m, p, f in zip(*(group[k].to_pylist() for k in (
        "volume_id", "members", "partition", "fingerprint")), strict=True)]
    previous = {r["volume_id"]: r for r in read_part(s.output, bucket)}
    counts, todo = settle_bucket(bucket, planning.merge_bucket(frags, previous, s, IndexParts(s.output)), s)
    return pa.Table.from_pylist([{"bucket": bucket, "todo": todo, "counts": counts.to_json(),
                                  **dict.fromkeys(SCAN_COUNTS, 0)}])


def plan_to_segment(row: dict, settings: dict) -> list[dict]:
    from unet_core.segmentation.records import Action
    from unet_core.segmentation.tables import read_plan

    s = from_dict(SegmentSettings, settings)
    return [p.to_row() for p in read_plan(s.output, int(row["bucket"]), Action.SEGMENT)]


def segment_row(row: dict, settings: dict, pool) -> dict:
    from jobs.predictors import predict_with
    from unet_core.segmentation.records import PlannedVolume
    from unet_core.segmentation.stages import segment_volume

    s = from_dict(SegmentSettings, settings)
    rec, how = segment_volume(PlannedVolume.from_row(row), s, predict_with(pool, s.prediction_attempts))
    return {"status": rec.status.value, "error_type": rec.error_type, "n_slices": rec.n_slices, "how": how.value}


def finish_bucket(row: dict, settings: dict) -> dict:
    from unet_core.segmentation.tables import finish_bucket as finish

    return {"bucket": row["bucket"], "counts": finish(int(row["bucket"]), from_dict(SegmentSettings, settings)).to_json()}


# ---- sizes of the local instance ------------------------------------------------------------------
def volume_slots(args, task_slots: int, n_volumes: int) -> int | None:
    """Volumes in flight. On the local instance, its CPUs not held by predictors: a volume task
    waiting on its predictor releases its CPU, and Ray would start (and later reap) one more worker
    process per waiting task, on the same cores. On a cluster, no cap unless asked for, so that an
    autoscaler can add CPU nodes for decoding."""
    if args.decode_concurrency:
        return min(args.decode_concurrency, n_volumes)
    return None if cluster_address(args.address) else min(task_slots, n_volumes)


def segment_blocks(n_volumes: int, slots: int) -> int:
    """Tasks of the segment stage: one volume each while there are few (every slot busy four
    times over), else VOLUMES_PER_TASK volumes each, and never more than MAX_SEGMENT_TASKS (or four
    per slot on a larger cluster), so that neither the driver's memory nor the scheduling cost
    grows with the archive (docs/design.md, "Driver memory")."""
    return max(1, min(n_volumes, max(4 * slots, min(-(-n_volumes // VOLUMES_PER_TASK), MAX_SEGMENT_TASKS))))


def local_cpus(predictors: int, num_gpus: float) -> int:
    """Logical CPUs of a local Ray instance: the machine's cores for decoding and writing, plus one
    per CPU predictor actor (whose reservation would otherwise starve the CPU tasks)."""
    return (os.cpu_count() or 1) + (0 if num_gpus else predictors)


def predictor_counts(args) -> tuple[int, int]:
    if args.concurrency:
        return args.concurrency, args.concurrency
    low = max(1, args.min_predictors)
    return low, max(low, args.max_predictors or low)


# ---- the job ----------------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    args = parse_with_config(build_parser(), argv)
    configure_output(args.verbose)
    from unet_core.bundle import read_info

    info = read_info(args.model)
    out = args.output.rstrip("/")
    low, high = predictor_counts(args)
    # Task results under this size are returned into the driver's own memory instead of the object
    # store; the shuffle's many small blocks would then grow the driver with the archive
    # (docs/design.md, "Driver memory"). Read by the processes of a local instance; a cluster sets
    # it on its nodes (cluster/).
    os.environ.setdefault("RAY_max_direct_call_object_size", str(INLINE_RESULT_BYTES))
    storage.probe_writable(out)  # before anything is read: a refused output fails now (exit 5)
    init_ray(args.address, args.num_cpus or local_cpus(low, args.num_gpus), verbose=args.verbose)
    import ray

    timer = Timer()
    if swept := storage.sweep_temporaries(out):
        log.info("removed %d unfinished temporary files of an interrupted run under %s", swept, out)
    # Local inputs as absolute paths: the same archive named two ways is one layout.
    inputs = tuple(i if "://" in i else os.path.abspath(i) for i in args.input)
    layout = None if args.overwrite else lay.read_layout(out)
    if layout is not None and layout.inputs != inputs:
        log.info("the inputs differ from the last run's (%s): every header is read again", ", ".join(layout.inputs))
        layout = None
    if layout is None:
        for folder in lay.OUTPUT_FOLDERS if args.overwrite else ("series_index", "volumes"):
            storage.delete_tree(storage.join(out, folder))
    storage.delete_tree(storage.join(out, "plan"))  # the plans of an interrupted run

    pools: list = []  # the predictor pool, once started; stopped however the job ends
    try:
        return _plan_and_segment(args, info, inputs, out, layout, low, high, pools, timer)
    finally:
        for pool in pools:  # the predictors go now, not whenever their handles are collected
            ray.get(pool.shutdown.remote())
            ray.kill(pool)


def _plan_and_segment(args, info, inputs: tuple[str, ...], out: str, layout, low: int, high: int, pools: list,
                      timer: Timer) -> int:
    import ray

    from unet_core.bundle import bundle_identity
    from unet_core.io import listing
    from unet_core.segmentation import planning

    if layout is None:  # a first run: the predictors load while the archive is listed and scanned
        pools.append(_start_pool(args, low, high))
    units, depth = planning.fan_out(list(inputs), layout.depth if layout else None, args.follow_symlinks)
    if not units:
        raise InputError(f"no objects under {', '.join(inputs)}")
    if layout is None:
        layout = lay.Layout(inputs, depth, *lay.choose_counts(len(units)))
        storage.write_bytes(lay.layout_uri(out), layout.to_json().encode())
    settings = SegmentSettings(
        output=out, bundle_info=info.to_json(), model_name=info.name, model_identity=bundle_identity(args.model),
        threshold=args.threshold if args.threshold is not None else info.threshold,
        modality="CT" if info.preprocess.modality == "CT" else None, limits=limits_from(args),
        largest_component=args.largest_component, fill_holes=args.fill_holes, qc=args.qc, dicom_seg=args.dicom_seg,
        keep_phi=args.keep_phi, keep_localizers=args.keep_localizers, assume_modality=args.assume_modality,
        follow_symlinks=args.follow_symlinks, resume=not args.overwrite, prediction_attempts=args.prediction_attempts,
        partitions=layout.partitions, buckets=layout.buckets)
    cfg = to_dict(settings)

    # 1. Listing, manifest join and header scan per listing partition; fragments merged per bucket.
    # CPU slots not held by predictors: scan and volume tasks use only those.
    task_slots = max(1, int(ray.cluster_resources().get("CPU", 1)) - (0 if args.num_gpus else low))
    by_partition: dict[int, list] = {}
    for u in units:
        by_partition.setdefault(lay.partition_of(u.key, layout.partitions), []).append((u.prefix, u.recursive))
    n_units = len(units)
    parts = [{"partition": p, "units": json.dumps(by_partition.get(p, []))} for p in range(layout.partitions)]
    del units, by_partition
    say(f"planning: listing {', '.join(inputs)} ({n_units:,} folders in {layout.partitions} partitions), reading "
        "new headers, grouping volumes ...")
    log.debug("fanned out; driver RSS %s", _rss_mib())
    n_blocks = max(1, min(len(parts), max(2 * task_slots, min(-(-len(parts) // SCAN_PARTITIONS_PER_BLOCK),
                                                              SCAN_BLOCKS_PER_SLOT * task_slots))))
    # The task-based sort shuffle: on small inputs the hash shuffle's aggregator actors cost seconds
    # to start. It takes few blocks: its work and the objects the driver owns grow with the square
    # of their number (docs/design.md, "Grouping: why fragments and a shuffle by volume bucket").
    ray.data.DataContext.get_current().shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    scanned = (ray.data.from_items(parts, override_num_blocks=n_blocks)
               .map_batches(scan_partitions, fn_kwargs={"settings": cfg, "roots": list(listing.real_roots(list(inputs)))},
                            batch_size=None, compute=ray.data.TaskPoolStrategy(size=min(task_slots, n_blocks))))
    if n_blocks > SHUFFLE_BLOCKS:
        scanned = scanned.repartition(SHUFFLE_BLOCKS)
    summaries = (scanned.groupby("bucket", num_partitions=max(1, min(layout.buckets, 2 * task_slots)))
                 .map_groups(merge_bucket, fn_kwargs={"settings": cfg}, batch_format="pyarrow"))
    del parts
    from unet_core.segmentation.tables import TableCounts

    scan, totals, seen, pending = dict.fromkeys(SCAN_COUNTS, 0), TableCounts(), set(), []
    for r in summaries.iter_rows():  # one row per bucket: bounded by the layout, not the archive
        for k in SCAN_COUNTS:
            scan[k] += int(r[k])
        if r["bucket"] >= 0:
            seen.add(int(r["bucket"]))
            totals.add(TableCounts.from_json(r["counts"]))
            if r["todo"]:
                pending.append((int(r["bucket"]), int(r["todo"])))
    if not scan["listed"]:
        raise InputError(f"no objects under {', '.join(inputs)}")
    log.debug("planned; driver RSS %s", _rss_mib())
    n_todo = sum(n for _, n in pending)
    scan_seconds = timer.seconds
    say(f"planning: {scan['listed']:,} objects listed ({scan['scanned']:,} headers read, {scan['reused']:,} "
        f"unchanged) in {scan_seconds:.0f}s; {n_todo:,} volumes to segment")

    # 2. Decode -> predict -> finish and write, streaming.
    done = {"segmented": 0, "resumed": 0, "slices": 0, "failed": 0}
    t_pipeline, predictor_wait, pool_stats = Timer(), 0.0, {}
    if n_todo:
        if not pools:
            pools.append(_start_pool(args, low, high))
        pool = pools[0]
        try:  # a bundle that cannot serve fails the job here, not each volume
            ray.get(pool.ready.remote())
        except ray.exceptions.RayError as exc:
            raise ConfigError(f"{args.model}: the model cannot be loaded on a predictor: "
                           f"{str(exc).strip().splitlines()[-1]}") from None
        predictor_wait = t_pipeline.seconds  # start-up the scan did not hide
        buckets = [{"bucket": b} for b, _ in pending]
        todo = (ray.data.from_items(buckets, override_num_blocks=len(buckets))
                .flat_map(plan_to_segment, fn_kwargs={"settings": cfg})
                .repartition(segment_blocks(n_todo, volume_slots(args, task_slots, n_todo) or
                                            int(ray.cluster_resources().get("CPU", 1)))))
        records = todo.map(segment_row, fn_kwargs={"settings": cfg, "pool": pool}, num_cpus=1,
                           compute=ray.data.TaskPoolStrategy(size=volume_slots(args, task_slots, n_todo)))
        with Progress("segment", n_todo, "volumes", rate_unit="slices") as progress:
            for r in records.iter_rows():
                done["resumed" if r["how"] == "resumed" else "segmented"] += 1
                done["slices"] += int(r["n_slices"] or 0) if r["how"] != "resumed" else 0
                done["failed"] += r["status"] != "ok"
                progress.update(done["segmented"] + done["resumed"], done["failed"], done["slices"])
        pool_stats = ray.get(pool.stats.remote())
    pipeline_seconds = t_pipeline.seconds
    log.debug("segmented; driver RSS %s", _rss_mib())

    # 3. Table parts of the buckets that had volumes to segment; parts of buckets that no longer
    # hold a volume go.
    if pending:
        for r in ray.data.from_items([{"bucket": b} for b, _ in pending]).map(
                finish_bucket, fn_kwargs={"settings": cfg}).iter_rows():
            totals.add(TableCounts.from_json(r["counts"]))
    for b in set(range(layout.buckets)) - seen:
        storage.delete(lay.volume_part_uri(out, b))
    ok, failed = totals.by_status.get("ok", 0), totals.by_status.get("error", 0)
    summary = {"volumes_ok": ok, "volumes_failed": failed, "objects_skipped": totals.by_status.get("skipped", 0),
               "objects_listed": scan["listed"], "headers_read": scan["scanned"], "headers_unchanged": scan["reused"],
               "segmented_now": done["segmented"], "resumed_from_records": done["resumed"], "slices_now": done["slices"],
               "slices_per_second": done["slices"] / max(pipeline_seconds, 1e-9), "scan_seconds": scan_seconds,
               "predictor_wait_seconds": predictor_wait, "pipeline_seconds": pipeline_seconds,
               "total_seconds": timer.seconds, "failures_by_type": dict(totals.by_error_type),
               "volume_table_parts_written": totals.parts_written, **pool_stats, "model": info.name,
               "model_identity": settings.model_identity, "dicom_seg": args.dicom_seg, "qc": args.qc, "output": out,
               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    storage.write_bytes(storage.join(out, "summary.json"), json.dumps(summary, indent=2).encode())
    from unet_core.report import segment_report

    report = segment_report(out, summary, totals.failures)
    print(f"segmented {done['segmented']} volumes ({done['slices']} slices, {summary['slices_per_second']:.1f} slices/s) "
          f"in {timer.seconds:.0f}s; {ok} ok, {failed} failed, {summary['objects_skipped']} objects skipped; "
          f"{scan['listed']} objects listed, {scan['scanned']} headers read -> {out}")
    print(f"  report: {report}")
    if done["resumed"]:
        print(f"  {done['resumed']} already complete (recorded by an interrupted run; not redone)")
    for vid, error in totals.failures:
        print(f"  failed: {vid}: {error}")
    if failed > len(totals.failures):
        print(f"  ... {failed - len(totals.failures)} more; see {out}/volumes/")
    if totals.by_error_type:
        print("  failures by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.by_error_type.items())))
    return EXIT_SOME_FAILED if failed else 0


def _rss_mib() -> str:
    import psutil

    m = psutil.Process().memory_full_info()
    return f"{m.rss / 2**20:.0f} MiB (unique {m.uss / 2**20:.0f}, shared {m.shared / 2**20:.0f})"


def _start_pool(args, low: int, high: int):
    from jobs.predictors import start_pool

    return start_pool(args.model, args.batch_size, args.precision, args.xla, low, high, args.num_gpus)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
