"""`unet segment`: bulk segmentation of DICOM / NIfTI archives with Ray Data.

    predictor actors start loading (one model per actor; --concurrency, --num-gpus) while the
    inputs are listed and scanned (CPU tasks: headers only, zip members too) -> group into volumes ->
    per volume, one CPU task: decode + preprocess -> predict on a predictor actor (only the model
    input and the probabilities travel) -> threshold, optional largest component / hole filling,
    back to the source grid -> write

Each row of the pipeline is one volume, so memory is bounded by Ray Data's backpressure whatever
the archive size. Outputs under --output:
    masks/<volume_id>.nii.gz        uint8 labels on the source voxel grid, source affine
    slices/<volume_id>.parquet      per-slice masks (unet_core.io.mask_codec encoding)
    qc/<volume_id>.png              with --qc: montage with the mask outline
    volumes/ok|error/<volume_id>.parquet  the completion record, written last
    volumes.parquet                 one row per input volume (and per unusable object)
    series_index.parquet            every scanned object: what it is, where it went, or why not
    summary.json
A re-run skips volumes already recorded ok; --overwrite redoes them. Exit status: 0 when every
volume succeeded, 3 when some failed (all others still written), 2 for a usage error.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time

from jobs.common import (Timer, add_limit_args, add_ray_args, cluster_address, init_ray, limits_from, log,
                         parse_with_config, run_main, setup_logging)
from unet_core.config import to_dict
from unet_core.errors import InputError, JobError
from unet_core.io import storage
from unet_core.volume import short_hash

EXIT_SOME_FAILED = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unet segment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="prefixes or files: DICOM (any layout), NIfTI, .zip exports")
    p.add_argument("--model", required=True, help="model bundle (local or s3://)")
    p.add_argument("--output", required=True, help="output prefix (local or s3://)")
    p.add_argument("--config", help="JSON/YAML file of option values")
    p.add_argument("--batch-size", type=int, default=16, help="slices per model call")
    p.add_argument("--concurrency", type=int, default=1, help="predictor actors")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs per predictor actor")
    p.add_argument("--decode-concurrency", type=int, default=None,
                   help="at most this many volumes in flight (decoding, waiting for a predictor, writing); "
                        "default: the local instance's CPUs not held by predictors; on a cluster, no cap")
    p.add_argument("--precision", default="float32", choices=["float32", "mixed_float16", "mixed_bfloat16"])
    p.add_argument("--xla", action="store_true")
    p.add_argument("--threshold", type=float, default=None, help="override the bundle's threshold")
    p.add_argument("--largest-component", action="store_true", help="keep the largest 3D connected component per label")
    p.add_argument("--fill-holes", action="store_true", help="fill holes in 3D per label")
    p.add_argument("--qc", action="store_true", help="write a PNG montage per volume")
    p.add_argument("--keep-phi", action="store_true", help="keep patient name, ID and birth date in the outputs")
    p.add_argument("--overwrite", action="store_true", help="redo volumes already complete")
    add_ray_args(p)
    add_limit_args(p)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


# ---- stage bodies (run in Ray tasks / actors; plain functions of dicts) --------------------------
def scan_batch(batch: dict, cfg: dict) -> dict:
    """Headers of a batch of stored objects; zip archives expand to their members."""
    from unet_core.config import Limits, from_dict
    from unet_core.io import archive
    from unet_core.io.dicom import HEADER_PREFIX_BYTES, DicomHeader, scan_header
    from unet_core.io.nifti import is_nifti_name

    limits = from_dict(Limits, cfg["limits"])
    rows = []

    def header(uri: str, size: int, data: bytes | None) -> dict:
        if is_nifti_name(uri):
            return {**DicomHeader(uri=uri, size=size).row(), "format": "nifti"}
        try:
            if data is None:
                data = storage.read_range(uri, 0, HEADER_PREFIX_BYTES) if size > HEADER_PREFIX_BYTES else storage.read_bytes(uri)
            h = scan_header(data, uri, size)
            if h is None:
                h = scan_header(storage.read_bytes(uri, max_bytes=limits.max_file_bytes), uri)
        except InputError as exc:
            h = DicomHeader(uri=uri, size=size, kind="error", reason=str(exc), error_type=exc.reason)
        return {**h.row(), "format": "dicom"}

    for uri, size in zip(batch["uri"], batch["size"]):
        uri, size = str(uri), int(size)
        if not archive.is_zip_name(uri):
            rows.append(header(uri, size, None))
            continue
        try:
            data = storage.read_bytes(uri, max_bytes=limits.max_file_bytes)
            for m in archive.list_members(data, uri, limits):
                if m.error:
                    rows.append({**DicomHeader(uri=m.uri, size=m.size, kind="error", reason=m.error,
                                               error_type="unsafe_archive_member").row(), "format": "dicom"})
                    continue
                try:
                    member = archive.read_member(data, uri, m.name, limits)
                except InputError as exc:
                    rows.append({**DicomHeader(uri=m.uri, size=m.size, kind="error", reason=str(exc),
                                               error_type=exc.reason).row(), "format": "dicom"})
                    continue
                rows.append(header(m.uri, len(member), member))
        except InputError as exc:
            rows.append({**DicomHeader(uri=uri, size=size, kind="error", reason=str(exc), error_type=exc.reason).row(),
                         "format": "zip"})
    return _columns(rows)


def decode_volume(item: dict, cfg: dict) -> dict:
    """Read one volume and make its model input; errors become the row's status."""
    from unet_core.bundle import BundleInfo
    from unet_core.config import Limits, from_dict
    from unet_core.inference import prepare_volume
    from unet_core.io import read_object
    from unet_core.io.dicom import DicomHeader, SeriesGroup, read_series
    from unet_core.io.nifti import read_nifti

    t = time.perf_counter()
    out = {k: item[k] for k in ("volume_id", "format", "source", "series_uid")}
    try:
        limits = from_dict(Limits, cfg["limits"])
        info = BundleInfo.from_json(cfg["bundle_info"])
        if item["format"] == "nifti":
            volume = read_nifti(read_object(item["source"], limits), item["source"], limits, volume_id=item["volume_id"])
        else:
            headers = [DicomHeader(**{**h, "orientation": tuple(h["orientation"]), "position": tuple(h["position"]),
                                      "pixel_spacing": tuple(h["pixel_spacing"])}) for h in json.loads(item["headers"])]
            group = SeriesGroup(item["volume_id"], item["series_uid"], headers)
            volume = read_series(group, [read_object(u, limits) for u in group.uris], limits, cfg["keep_phi"])
        if cfg["modality"] and volume.modality not in (cfg["modality"], "OT") and item["format"] == "dicom":
            raise InputError(f"{item['source']}: modality {volume.modality} does not match the model's {cfg['modality']}",
                             uri=item["source"])
        out.update(status="ok", error="", error_type="", x=prepare_volume(volume, info.preprocess),
                   voxels=volume.voxels, affine=volume.affine, modality=volume.modality,
                   metadata=json.dumps(volume.metadata, default=str))
    except InputError as exc:
        out.update(status="error", error=str(exc), error_type=exc.reason, x=None, voxels=None, affine=None,
                   modality="", metadata="{}")
    except Exception as exc:  # noqa: BLE001 - one bad volume must not stop the job
        out.update(status="error", error=f"{item['source']}: {type(exc).__name__}: {exc}", error_type="internal",
                   x=None, voxels=None, affine=None, modality="", metadata="{}")
    out["decode_seconds"] = time.perf_counter() - t
    return out


class PredictorServer:
    """A predictor actor: one model per actor, loaded and traced once. The pool is started before
    the archive is scanned, so loading TensorFlow and the model overlaps the scan."""

    def __init__(self, bundle_uri: str, batch_size: int, precision: str, xla: bool):
        from unet_core.inference import SlicePredictor

        self.predictor = SlicePredictor(bundle_uri, batch_size, precision, xla)
        self.predictor.warm_up()

    def ready(self) -> bool:
        return True

    def predict(self, x) -> tuple:
        before = self.predictor.model_seconds
        prob = self.predictor.predict(x)
        return prob, self.predictor.model_seconds - before


SCAN_OBJECTS_PER_BLOCK, MAX_SCAN_BLOCKS = 256, 4000


def scan_blocks(n_objects: int, slots: int) -> int:
    """Blocks of the header scan: every scan slot busy twice over, else blocks of about 256 objects.
    A header costs about a millisecond and a scan task some 10-25 ms of scheduling and start-up, so
    blocks of a few objects would spend more time on tasks than on headers."""
    return max(1, min(n_objects, MAX_SCAN_BLOCKS, max(2 * slots, -(-n_objects // SCAN_OBJECTS_PER_BLOCK))))


def volume_slots(args, task_slots: int, n_volumes: int) -> int | None:
    """Volumes in flight. On the local instance, its CPUs not held by predictors: a volume task
    waiting on its predictor releases its CPU, and Ray would start (and later reap) one more worker
    process per waiting task, on the same cores. On a cluster, no cap unless asked for, so that an
    autoscaler can add CPU nodes for decoding."""
    if args.decode_concurrency:
        return min(args.decode_concurrency, n_volumes)
    return None if cluster_address(args.address) else min(task_slots, n_volumes)


def local_cpus(concurrency: int, num_gpus: float) -> int:
    """Logical CPUs of a local Ray instance: the machine's cores for decoding and writing, plus one
    per CPU predictor actor (whose reservation would otherwise starve the CPU tasks)."""
    import os

    return (os.cpu_count() or 1) + (0 if num_gpus else concurrency)


def segment_volume(item: dict, cfg: dict, servers: list) -> dict:
    """One volume through the pipeline in a CPU task: decode and preprocess here, predict on the
    volume's predictor actor (only the model input and the probabilities travel), then threshold,
    post-process and write here. The decoded voxels never leave this worker."""
    import ray

    row = decode_volume(item, cfg)
    row["prob"], row["predict_seconds"], row["model_seconds"] = None, 0.0, 0.0
    x = row.pop("x", None)
    if row["status"] == "ok" and x is not None and len(x):
        t = time.perf_counter()
        server = servers[int(short_hash(item["volume_id"]), 16) % len(servers)]
        try:
            row["prob"], row["model_seconds"] = ray.get(server.predict.remote(x))
        except ray.exceptions.RayError as exc:  # the model failed on this input, or its actor for good
            row.update(status="error", error=f"{item['source']}: prediction failed: {str(exc).splitlines()[-1]}",
                       error_type="internal")
        row["predict_seconds"] = time.perf_counter() - t
    return finish_and_write(row, cfg)


def finish_and_write(row: dict, cfg: dict) -> dict:
    """Labels on the source grid, outputs written, then the completion record (last)."""
    import numpy as np

    from unet_core.inference import PostProcess, finish_volume, qc_montage_png, volume_stats
    from unet_core.io.mask_codec import slices_table_bytes
    from unet_core.io.nifti import mask_to_nifti_bytes
    from unet_core.volume import Volume

    t = time.perf_counter()
    out_uri, vid = cfg["output"], row["volume_id"]
    record = {"volume_id": vid, "source": row["source"], "format": row["format"], "series_uid": row["series_uid"] or "",
              "status": row["status"], "error": row["error"], "error_type": row["error_type"], "mask_uri": "",
              "slices_uri": "", "qc_uri": "", "n_slices": 0, "mask_voxels": 0, "mask_volume_ml": 0.0,
              "mean_hu_in_mask": None, "modality": row.get("modality") or "", "model": cfg["model_name"],
              "model_identity": cfg["model_identity"], "decode_seconds": float(row.get("decode_seconds") or 0),
              "predict_seconds": float(row.get("predict_seconds") or 0), "model_seconds": float(row.get("model_seconds") or 0),
              "write_seconds": 0.0, "metadata": row.get("metadata") or "{}", "finished": ""}
    if row["status"] == "ok":
        try:
            volume = Volume(voxels=np.asarray(row["voxels"]), affine=np.asarray(row["affine"]), volume_id=vid,
                            modality=row["modality"], metadata=json.loads(row["metadata"]))
            labels = finish_volume(np.asarray(row["prob"]), volume, cfg["threshold"], PostProcess(**cfg["post"]))
            record.update(volume_stats(labels, volume))
            mask_uri = storage.join(out_uri, "masks", f"{vid}.nii.gz")
            storage.write_bytes(mask_uri, mask_to_nifti_bytes(labels, volume))
            slices_uri = storage.join(out_uri, "slices", f"{vid}.parquet")
            storage.write_bytes(slices_uri, slices_table_bytes(vid, labels))
            record.update(mask_uri=mask_uri, slices_uri=slices_uri)
            if cfg["qc"]:
                qc_uri = storage.join(out_uri, "qc", f"{vid}.png")
                storage.write_bytes(qc_uri, qc_montage_png(volume, labels, title=vid))
                record["qc_uri"] = qc_uri
        except InputError as exc:
            record.update(status="error", error=str(exc), error_type=exc.reason)
        except Exception as exc:  # noqa: BLE001 - one bad volume must not stop the job
            record.update(status="error", error=f"{row['source']}: {type(exc).__name__}: {exc}", error_type="internal")
    record["write_seconds"] = time.perf_counter() - t
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        write_record(out_uri, record)
        record["recorded"] = True
    except InputError as exc:  # the output store failed past its retries: not complete, redo next run
        record.update(status="error", error=f"{row['source']}: the result could not be recorded: {exc}",
                      error_type=exc.reason, mask_uri="", slices_uri="", qc_uri="", recorded=False)
    return record


# ---- records --------------------------------------------------------------------------------------
RECORD_SCHEMA_FIELDS = [
    ("volume_id", "string"), ("source", "string"), ("format", "string"), ("series_uid", "string"),
    ("status", "string"), ("error", "string"), ("error_type", "string"), ("mask_uri", "string"),
    ("slices_uri", "string"), ("qc_uri", "string"), ("n_slices", "int32"), ("mask_voxels", "int64"),
    ("mask_volume_ml", "float64"), ("mean_hu_in_mask", "float64"), ("modality", "string"), ("model", "string"),
    ("model_identity", "string"), ("decode_seconds", "float64"), ("predict_seconds", "float64"),
    ("model_seconds", "float64"), ("write_seconds", "float64"), ("metadata", "string"), ("finished", "string"),
]


def record_schema():
    import pyarrow as pa

    return pa.schema([pa.field(n, getattr(pa, t)()) for n, t in RECORD_SCHEMA_FIELDS])


def _table_bytes(rows: list[dict], schema=None) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf, compression="zstd")
    return buf.getvalue()


def write_record(out_uri: str, record: dict) -> None:
    """Publish a volume's completion record; an ok record replaces an earlier error record."""
    status = "ok" if record["status"] == "ok" else "error"
    storage.write_bytes(storage.join(out_uri, "volumes", status, f"{record['volume_id']}.parquet"),
                        _table_bytes([record], record_schema()))
    if status == "ok":
        storage.delete(storage.join(out_uri, "volumes", "error", f"{record['volume_id']}.parquet"))


def _recorded(out_uri: str, status: str) -> dict[str, str]:
    try:
        entries = storage.list_files(storage.join(out_uri, "volumes", status))
    except InputError:
        return {}
    return {storage.basename(e.uri)[: -len(".parquet")]: e.uri for e in entries if e.uri.endswith(".parquet")}


def _columns(rows: list[dict]) -> dict:
    keys = list(rows[0]) if rows else []
    return {k: [r.get(k) for r in rows] for k in keys}


# ---- the job ----------------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    args = parse_with_config(build_parser(), argv)
    setup_logging(args.verbose)
    from unet_core.bundle import bundle_identity, read_info

    info = read_info(args.model)
    threshold = args.threshold if args.threshold is not None else info.threshold
    out = args.output.rstrip("/")
    init_ray(args.address, args.num_cpus or local_cpus(args.concurrency, args.num_gpus))
    import ray

    timer = Timer()
    # The predictor actors load while the inputs are listed and scanned. Restarted if their
    # process dies (a call in flight is retried on the new actor).
    server_cls = ray.remote(PredictorServer).options(num_gpus=args.num_gpus, num_cpus=0 if args.num_gpus else 1,
                                                     max_restarts=-1, max_task_retries=-1)
    servers = [server_cls.remote(args.model, args.batch_size, args.precision, args.xla)
               for _ in range(args.concurrency)]

    if swept := storage.sweep_temporaries(out):
        log.info("removed %d unfinished temporary files of an interrupted run under %s", swept, out)
    if args.overwrite:
        for folder in ("volumes", "masks", "slices", "qc"):
            storage.delete_tree(storage.join(out, folder))
    entries = []
    for uri in args.input:
        entries += storage.list_files(uri)
    entries = [e for e in entries if not e.uri.startswith(out + "/")]
    if not entries:
        raise InputError(f"no objects under {args.input}")
    limits = limits_from(args)
    cfg = {"limits": to_dict(limits), "bundle_info": info.to_json(), "keep_phi": args.keep_phi, "output": out,
           "threshold": threshold, "post": {"largest_component": args.largest_component, "fill_holes": args.fill_holes},
           "qc": args.qc, "model_name": info.name, "model_identity": bundle_identity(args.model),
           "modality": "CT" if info.preprocess.modality == "CT" else None}

    # 1. Distributed header scan.
    log.info("scanning %d objects under %s", len(entries), ", ".join(args.input))
    # CPU slots not held by predictors: scan tasks use only those, so the predictors load during
    # the scan instead of after it.
    task_slots = max(1, int(ray.cluster_resources().get("CPU", 1)) - (0 if args.num_gpus else args.concurrency))
    n_blocks = scan_blocks(len(entries), task_slots)
    scan = ray.data.from_items([{"uri": e.uri, "size": e.size} for e in entries], override_num_blocks=n_blocks)
    headers = scan.map_batches(scan_batch, fn_kwargs={"cfg": cfg}, batch_size=64,
                               compute=ray.data.TaskPoolStrategy(size=min(task_slots, n_blocks))).take_all()
    volumes, index_rows, refused = plan_volumes(headers)
    storage.write_bytes(storage.join(out, "series_index.parquet"), _index_bytes(index_rows))
    scan_seconds = timer.seconds

    # 2. Skip what is complete.
    done = set() if args.overwrite else set(_recorded(out, "ok"))
    todo = [v for v in volumes if v["volume_id"] not in done]
    log.info("%d volumes found (%d already complete, %d to segment); %d objects set aside",
             len(volumes), len(volumes) - len(todo), len(todo), len(refused))

    # 3. Decode -> predict -> finish and write, streaming.
    n_slices, t_pipeline, records, predictor_wait = 0, Timer(), [], 0.0
    try:
        if todo:
            try:  # a bundle that cannot serve fails the job here, not each volume
                ray.get([s.ready.remote() for s in servers])
            except ray.exceptions.RayError as exc:
                raise JobError(f"{args.model}: the model cannot be loaded on a predictor: "
                               f"{str(exc).strip().splitlines()[-1]}") from None
            predictor_wait = t_pipeline.seconds  # start-up the scan did not hide
            ds = ray.data.from_items(todo, override_num_blocks=len(todo))
            ds = ds.map(segment_volume, fn_kwargs={"cfg": cfg, "servers": servers}, num_cpus=1,
                        compute=ray.data.TaskPoolStrategy(size=volume_slots(args, task_slots, len(todo))))
            for record in ds.iter_rows():
                records.append(record)
                n_slices += int(record["n_slices"] or 0)
                if len(records) % 10 == 0 or len(records) == len(todo):
                    log.info("volumes done: %d/%d", len(records), len(todo))
    finally:  # the predictors go now, not whenever their handles are collected
        for server in servers:
            ray.kill(server)
    pipeline_seconds = t_pipeline.seconds

    # 4. The per-volume table: every recorded volume, plus the objects that formed no volume.
    table = consolidate(out, refused, cfg, [r for r in records if not r["recorded"]])
    failed = [r for r in table if r["status"] == "error"]
    ok = [r for r in table if r["status"] == "ok"]
    summary = {"volumes_ok": len(ok), "volumes_failed": len(failed),
               "objects_skipped": sum(r["status"] == "skipped" for r in table), "segmented_now": len(records),
               "slices_now": n_slices, "slices_per_second": n_slices / max(pipeline_seconds, 1e-9),
               "scan_seconds": scan_seconds, "predictor_wait_seconds": predictor_wait,
               "pipeline_seconds": pipeline_seconds, "total_seconds": timer.seconds, "model": info.name, "output": out}
    storage.write_bytes(storage.join(out, "summary.json"), json.dumps(summary, indent=2).encode())
    print(f"segmented {len(records)} volumes ({n_slices} slices, {summary['slices_per_second']:.1f} slices/s) in "
          f"{timer.seconds:.0f}s; {len(ok)} ok, {len(failed)} failed, {summary['objects_skipped']} objects skipped -> {out}")
    reasons: dict[str, int] = {}
    for r in failed:
        reasons[r["error_type"] or "error"] = reasons.get(r["error_type"] or "error", 0) + 1
    for r in failed[:20]:
        print(f"  failed: {r['volume_id']}: {r['error']}")
    if len(failed) > 20:
        print(f"  ... {len(failed) - 20} more; see {out}/volumes.parquet")
    if reasons:
        print("  failures by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    return EXIT_SOME_FAILED if failed else 0


def plan_volumes(headers: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Scanned objects -> (volume work items, series-index rows, refused-object records)."""
    from unet_core.io.dicom import DicomHeader, group_series
    from unet_core.io.nifti import nifti_volume_id

    fields = set(DicomHeader.__dataclass_fields__)
    dicom, volumes, index, refused = [], [], [], []
    for h in headers:
        if h["format"] == "nifti":
            vid = nifti_volume_id(h["uri"])
            volumes.append({"volume_id": vid, "format": "nifti", "source": h["uri"], "series_uid": "", "headers": "[]"})
            index.append({**h, "volume_id": vid})
            continue
        d = {k: v for k, v in h.items() if k in fields}
        for key in ("orientation", "position", "pixel_spacing"):
            d[key] = tuple(d[key]) if d[key] is not None else None
        dicom.append(DicomHeader(**d))
    groups, aside = group_series(dicom)
    for g in groups:
        volumes.append({"volume_id": g.volume_id, "format": "dicom", "source": _common_prefix(g.uris),
                        "series_uid": g.series_uid, "headers": json.dumps([h.row() for h in g.headers])})
        index += [{**h.row(), "format": "dicom", "volume_id": g.volume_id} for h in g.headers]
    for h in aside:
        index.append({**h.row(), "format": "dicom", "volume_id": ""})
        refused.append({"volume_id": "obj-" + short_hash(h.uri), "source": h.uri, "format": "dicom", "series_uid": h.series_uid,
                        "status": "skipped" if h.kind == "non_image" else "error", "error": h.reason,
                        "error_type": h.error_type})
    return volumes, index, refused


def _common_prefix(uris: list[str]) -> str:
    import os

    if len(uris) == 1:
        return uris[0]
    prefix = os.path.commonprefix(uris)
    return prefix[: prefix.rfind("/") + 1] if "/" in prefix else prefix


def _index_bytes(rows: list[dict]) -> bytes:
    keep = ["uri", "size", "format", "kind", "reason", "error_type", "volume_id", "sop_class_uid", "series_uid",
            "study_uid", "modality", "transfer_syntax", "rows", "columns", "frames", "instance_number"]
    return _table_bytes([{k: r.get(k) for k in keep} for r in rows], schema=None)


def consolidate(out: str, refused: list[dict], cfg: dict, unrecorded: list[dict] = ()) -> list[dict]:
    """volumes.parquet: one row per recorded volume (latest record wins), this run's volumes whose
    record could not be written, and the refused objects."""
    import pyarrow.parquet as pq

    rows = {}
    for status in ("error", "ok"):  # ok last: it wins over an older error record of the same volume
        for vid, uri in _recorded(out, status).items():
            rows[vid] = pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist()[0]
    for r in unrecorded:
        if rows.get(r["volume_id"], {}).get("status") != "ok":
            rows[r["volume_id"]] = r
    defaults = {n: (0 if t.startswith("int") else None if t.startswith("float") else "") for n, t in RECORD_SCHEMA_FIELDS}
    for r in refused:
        rows.setdefault(r["volume_id"], {**defaults, **r, "model": cfg["model_name"], "model_identity": cfg["model_identity"],
                                          "metadata": "{}"})
    table = sorted(rows.values(), key=lambda r: (r["status"] != "ok", r["volume_id"]))
    storage.write_bytes(storage.join(out, "volumes.parquet"), _table_bytes(table, record_schema()))
    return table


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
