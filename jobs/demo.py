"""`unet demo`: the whole product on a synthetic CT archive, on this machine.

1. writes labelled phantom CT cases (NIfTI) and a hospital-like archive with ground truth: DICOM
   series in four orientations, a zip export, NIfTI volumes, a structured report and junk;
2. `unet prepare` -> `unet train` (2 Ray Train workers on CPU, a small U-Net) ->
   `unet segment --qc` over the archive -> `unet evaluate` against the truth;
3. prints a table of volumes, Dice, speed and where every output went.
Outputs go under --output (local by default; `--storage s3://bucket/demo` for a real bucket). The
output must be empty, or an earlier demo's (its marker `demo.json`): a re-run removes only the
demo's own folders, and a prefix holding anything else is refused (unet_core/ownership.py).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from jobs import evaluate, prepare, segment, train
from jobs.exits import Exit, run_main
from jobs.options import add_ray_args, parse_with_config
from jobs.output import configure as configure_output
from jobs.progress import Timer
from jobs.runtime import init_ray
from unet_core import ownership
from unet_core.inference import qc_montage_png
from unet_core.io import read_volume, storage
from unet_core.segmentation.summary import RunSummary
from unet_core.segmentation.tables import read_series_index, read_volume_table
from unet_core.synthetic import write_demo_archive, write_training_set


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unet demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", "--storage", dest="output", default="demo-output",
                   help="where everything goes: a local folder, or s3://bucket/prefix for a real bucket")
    p.add_argument("--config", help="JSON/YAML file of option values")
    p.add_argument("--cases", type=int, default=12, help="labelled training cases")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    add_ray_args(p)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str]) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    from unet_core.segmentation.records import rows_from_bytes

    args = parse_with_config(build_parser(), argv)
    configure_output(args.verbose)
    out = args.output.rstrip("/")
    j = lambda *p: storage.join(out, *p)
    timer = Timer()
    ray_args = ["--address", args.address] if args.address else []
    clear_output(out)  # before Ray starts: a prefix that is not the demo's is refused (exit 2)
    init_ray(args.address, args.num_cpus or (args.workers + 1 if not args.address else None), verbose=args.verbose)

    print(f"[1/5] writing {args.cases} labelled phantom cases and a synthetic archive under {out}")
    write_training_set(j("labelled"), args.cases, size=64, n_slices=16, seed=args.seed)
    demo = write_demo_archive(j("archive"), j("truth"), seed=100 + args.seed)

    print("[2/5] unet prepare")
    prepare.main(["--images", j("labelled", "images"), "--masks", j("labelled", "masks"), "--output", j("prepared"),
                  "--input-size", "64", "--foreground-labels", "1", "--seed", str(args.seed), *ray_args])
    print(f"[3/5] unet train ({args.workers} workers, up to {args.epochs} epochs)")
    rc = train.main(["--data", j("prepared"), "--output", j("model"), "--workers", str(args.workers), "--epochs",
                     str(args.epochs), "--base-filters", "8", "--depth", "3", "--batch-size", "4", "--loss", "bce_dice",
                     "--batch-norm", "--dropout", "0.1", "--seed", str(args.seed), *ray_args])
    if rc:
        return rc
    print("[4/5] unet segment")
    seg_rc = segment.main(["--input", demo.root, "--model", j("model"), "--output", j("segmented"), "--qc",
                           "--assume-modality", "CT",  # the archive's NIfTI volumes are CT
                           "--batch-size", "16", *ray_args])
    print("[5/5] unet evaluate")
    evaluate.main(["--pred", j("segmented"), "--truth", demo.truth, *ray_args])

    volumes = sorted(read_volume_table(j("segmented")), key=lambda r: (r["status"] != "ok", r["volume_id"]))
    scores = {r["volume_id"]: r for r in rows_from_bytes(storage.read_bytes(j("segmented", "evaluation.parquet")))}
    write_pictures(j("segmented"), j("pictures"), scores)
    summary = RunSummary.read(j("segmented"))
    print("\nvolume                        source                                      status   Dice   volume ml")
    for r in volumes:
        d = scores.get(r["volume_id"], {}).get("dice")
        src = r["source"][len(demo.root) + 1:] if r["source"].startswith(demo.root) else r["source"]
        print(f"{r['volume_id']:<29} {src[:43]:<43} {r['status']:<8} {'' if d is None else f'{d:5.3f}':>5}  "
              f"{(r['mask_volume_ml'] or 0):9.1f}")
    ok = [s["dice"] for s in scores.values() if s["status"] == "ok"]
    print(f"\nmean Dice {sum(ok) / max(len(ok), 1):.3f} over {len(ok)} volumes; segmentation "
          f"{summary.slices_per_second:.1f} slices/s; {summary.volumes_failed} bad objects reported with reasons; "
          f"{timer.seconds:.0f}s in all")
    print(f"outputs: model bundle and training curves {j('model')}/ (curves.png); masks {j('segmented', 'masks')}/; "
          f"montages with predicted (red) and true (green) outlines {j('pictures')}/; tables {j('segmented', 'volumes')}/, "
          f"{j('segmented', 'evaluation.parquet')}")
    return Exit.OK if seg_rc in (Exit.OK, Exit.SOME_FAILED) else seg_rc


def clear_output(out: str) -> None:
    """Make `out` the demo's and empty it: refused (ConfigError) when it holds objects the demo does
    not name and no demo marker; otherwise the demo's own folders (it wrote everything in them) are
    removed, anything else under `out` stays, and the marker is written before anything else is."""
    ownership.check_output(out, ownership.DEMO_OUTPUT)
    ownership.delete_owned(out, ownership.DEMO_OUTPUT.overwrite, ownership.DEMO_OUTPUT)
    storage.write_bytes(storage.join(out, ownership.DEMO_OUTPUT.marker),
                        json.dumps({"job": ownership.DEMO_OUTPUT.job, "folders": list(ownership.DEMO_FOLDERS)}).encode())


def write_pictures(segmented: str, pictures: str, scores: dict) -> None:
    """Per volume: a montage of slices with the predicted and the true outline."""


    index = read_series_index(segmented)
    for vid, score in scores.items():
        if score["status"] != "ok":
            continue
        uris = [r["uri"] for r in index if r["volume_id"] == vid]
        source = read_volume(uris[0] if uris[0].endswith((".nii", ".nii.gz")) else uris)
        labels = read_volume(score["mask_uri"]).voxels.astype(np.uint8)
        truth = read_volume(score["truth"]).voxels > 0
        png = qc_montage_png(source, labels, truth, title=f"{vid}  Dice {score['dice']:.3f}")
        storage.write_bytes(storage.join(pictures, f"{vid}.png"), png)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
