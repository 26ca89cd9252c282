"""`unet evaluate --pred OUTPUT --truth URI`: Dice, IoU and HD95 (mm) per volume.

Predictions are the masks listed in the volume table OUTPUT/volumes/ (from `unet segment`). Each is paired
with a ground-truth NIfTI under --truth named `<volume_id>.nii.gz` or `<case_id>.nii.gz` (the
NIfTI source's stem), or by an explicit `--pairs` CSV (volume_id,truth). The truth must lie on the
prediction's voxel grid. Results go to OUTPUT/evaluation.parquet (or --output) and to the screen.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import sys

from jobs.exits import Exit, run_main
from jobs.options import add_output_args, add_ray_args, apply_output_args, parse_with_config
from jobs.output import configure as configure_output
from jobs.output import log, safe
from jobs.progress import Progress, Timer
from jobs.runtime import init_ray
from unet_core.errors import ConfigError, InputError, ItemFailure
from unet_core.evaluation import evaluate_case, truth_names
from unet_core.io import storage
from unet_core.segmentation.records import RowKind, Status
from unet_core.segmentation.store import OutputStore


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unet evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", required=True, help="output prefix of `unet segment`")
    p.add_argument("--truth", required=True, help="prefix of ground-truth NIfTI masks")
    p.add_argument("--pairs", default=None, help="CSV volume_id,truth overriding name matching")
    p.add_argument("--truth-labels", default=None, help="comma-separated truth labels that form the foreground (default: non-zero)")
    p.add_argument("--output", default=None, help="evaluation table (default: <pred>/evaluation.parquet)")
    p.add_argument("--config", help="JSON/YAML file of option values")
    add_output_args(p)
    add_ray_args(p)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def evaluate_pair(item: dict, cfg: dict) -> dict:
    out = {"volume_id": item["volume_id"], "truth": item["truth"], "mask_uri": item["mask_uri"], "status": "ok",
           "error": "", "error_type": "", "dice": float("nan"), "iou": float("nan"), "hd95_mm": float("nan"),
           "pred_voxels": 0, "truth_voxels": 0}
    try:
        out.update(evaluate_case(item["mask_uri"], item["truth"], cfg["truth_labels"]))
    except Exception as exc:  # noqa: BLE001 - the item guard: one volume's failure is its row, not the job's end
        failure = ItemFailure.of(item["mask_uri"], exc, "evaluation")
        out.update(status="error", error=failure.error, error_type=failure.error_type.value)
    return out


def main(argv: list[str]) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    args = parse_with_config(build_parser(), argv)
    configure_output(args.verbose)
    apply_output_args(args)

    table = OutputStore(args.pred).volume_table()
    if not table:
        raise InputError(f"{args.pred}: no volume table (volumes/); run `unet segment --output {args.pred}` first",
                         uri=args.pred)
    volumes = [r for r in table if r.status == Status.OK and r.kind == RowKind.VOLUME]
    truth_files = {storage.basename(e.uri): e.uri for e in storage.list_files(args.truth)}
    explicit = {}
    if args.pairs:
        for row in csv.DictReader(io.StringIO(storage.read_bytes(args.pairs).decode())):
            explicit[row["volume_id"]] = row["truth"]
    items, unmatched = [], []
    for v in volumes:
        names = truth_names(v.to_row())
        truth = explicit.get(v.volume_id) or next((truth_files[n] for n in names if n in truth_files), None)
        if truth:
            items.append({"volume_id": v.volume_id, "truth": truth, "mask_uri": v.mask_uri})
        else:
            unmatched.append(v.volume_id)
    for vid in unmatched:
        log.warning("no ground truth for %s", vid)
    if not items:
        raise InputError(f"no prediction under {args.pred} pairs with a truth mask under {args.truth}")
    try:
        labels = [int(x) for x in args.truth_labels.split(",")] if args.truth_labels else None
    except ValueError as exc:
        raise ConfigError(f"--truth-labels must be integers, got {args.truth_labels!r}") from exc

    storage.probe_writable(args.output.rsplit("/", 1)[0] if args.output and "/" in args.output else args.pred)
    init_ray(args.address, args.num_cpus, verbose=args.verbose)
    import ray

    timer = Timer()

    rows = []
    with Progress("evaluate", len(items), "volumes") as progress:
        for r in ray.data.from_items(items, override_num_blocks=len(items)).map(
                evaluate_pair, fn_kwargs={"cfg": {"truth_labels": labels}}).iter_rows():
            rows.append(r)
            progress.update(len(rows), sum(x["status"] != "ok" for x in rows))
    rows.sort(key=lambda r: r["volume_id"])
    out_uri = args.output or OutputStore(args.pred).evaluation_uri
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, compression="zstd")
    storage.write_bytes(out_uri, buf.getvalue())


    ok = [r for r in rows if r["status"] == "ok"]
    width = max(len(r["volume_id"]) for r in rows)
    print(f"{'volume':<{width}}  {'Dice':>6}  {'IoU':>6}  {'HD95 mm':>8}")
    for r in rows:
        if r["status"] == "ok":
            print(f"{r['volume_id']:<{width}}  {r['dice']:6.3f}  {r['iou']:6.3f}  {r['hd95_mm']:8.2f}")
        else:
            print(safe(f"{r['volume_id']:<{width}}  error: {r['error']}"))
    if ok:
        mean = {k: sum(r[k] for r in ok) / len(ok) for k in ("dice", "iou")}
        hd = [r["hd95_mm"] for r in ok if not math.isnan(r["hd95_mm"])]
        print(f"{'mean of ' + str(len(ok)):<{width}}  {mean['dice']:6.3f}  {mean['iou']:6.3f}  "
              f"{(sum(hd) / len(hd)) if hd else float('nan'):8.2f}   ({len(unmatched)} without truth; {timer.seconds:.1f}s) -> {out_uri}")
    return Exit.OK if len(ok) == len(rows) else Exit.SOME_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
