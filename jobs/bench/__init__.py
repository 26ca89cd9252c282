"""`unet bench`: benchmarks measured side by side in one run, printed as ratios. One module each:

    unet bench io       header-scan objects/s and full-decode slices/s on one core (DICOM CT series)
    unet bench train    (a) the full Ray Train pipeline with one worker vs (b) a plain single-process
                        Keras `model.fit` over in-memory arrays (the seed's way), same data and model
    unet bench segment  `unet segment` end to end against its stages alone and a naive loop; the seed
                        recipe against the native one on 512 x 512 CT (--seg-recipes-only: that alone)
    unet bench scale    `unet segment` on archives of N and 10N small objects: driver memory, time
                        per object, re-runs with nothing new and with 1% new series
    unet bench zip      the same archive as a folder and as one zip, locally and on S3 (moto's
                        server): time side by side, and the GETs each sends
    unet bench select   planning with the selection rules against without, on synthetic studies
    unet bench dicomweb the same archive from a folder and from a local Orthanc over DICOMweb: header
                        scan and instance reads per second, and `unet segment` end to end
    unet bench inference  predictor slices/s on this machine: float32, XLA, mixed_float16, mixed_bfloat16
    unet bench gpu      the one command for a machine with NVIDIA GPUs (see jobs/bench/gpu.py)
    unet bench rtstruct writing an RTSTRUCT for a 512 x 512 x 300 volume of several labels, against
                        predicting it (CPU seconds of each)
    unet bench quality  the seed recipe against the native recipe on synthetic CT where resolution
                        matters: held-out Dice / HD95, each recipe's ceiling, train and segment speed
    unet bench all      io, train and segment (scale writes 220,000 files: run it by itself)

Results go to docs/benchmarks.md with the command. `--check` (io, zip, select) compares each
measured ratio with its target (jobs/bench/common.py: TARGETS), prints both, and exits 3 when one
falls short; `--quick` sizes a bench to run in about a minute (CI runs `unet bench io --check
--quick`, and the same for zip and select: .ci/run).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import tempfile

from jobs.exits import Exit, run_main
from jobs.options import add_ray_args
from jobs.output import configure as configure_output

BENCHES = ("io", "train", "segment", "scale", "zip", "select", "dicomweb", "inference", "gpu", "rtstruct", "quality")
MODULES = {"zip": "zipped", "select": "selecting"}  # a bench whose module is not named after it


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unet bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", choices=[*BENCHES, "all"])
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--check", action="store_true",
                   help="io, zip, select: exit 3 when a measured ratio falls short of its target (both are printed)")
    p.add_argument("--quick", action="store_true",
                   help="io, zip, select: sizes that run in about a minute (what --check runs in CI)")
    g = p.add_argument_group("io")
    g.add_argument("--io-slices", type=int, default=48, help="slices of the 512 x 512 series (JPEG 2000: a sixth)")
    g.add_argument("--io-repeats", type=int, default=5, help="alternating rounds; the best of each side counts")
    t = p.add_argument_group("train")
    t.add_argument("--train-cases", type=int, default=8)
    t.add_argument("--train-size", type=int, default=128)
    t.add_argument("--train-slices", type=int, default=32, help="slices per case")
    t.add_argument("--train-filters", type=int, default=16)
    t.add_argument("--train-epochs", type=int, default=4)
    t.add_argument("--train-tracking-uri", default=None,
                   help="an MLflow server: also train once tracked there, to measure tracking's overhead")
    t.add_argument("--train-batch", type=int, default=8)
    s = p.add_argument_group("segment")
    s.add_argument("--seg-series", type=int, default=32, help="CT series of 256x256 slices in the archive (x4 for the large one)")
    s.add_argument("--seg-slices", type=int, default=48)
    s.add_argument("--seg-size", type=int, default=128, help="model input size")
    s.add_argument("--seg-filters", type=int, default=16)
    s.add_argument("--seg-recipes-only", action="store_true",
                   help="only the seed-against-native recipe comparison (512 x 512 CT at 0.7 mm; no archive, no Ray)")
    s.add_argument("--recipe-filters", type=int, default=64, help="base filters of the recipe comparison's network")
    s.add_argument("--recipe-slices", type=int, default=16,
                   help="slices of each of its 2 volumes (a multiple of --recipe-batch keeps the seed's batches full)")
    s.add_argument("--recipe-batch", type=int, default=16, help="the predictor's batch size in it")
    s.add_argument("--recipe-tta", action="store_true", help="also native + --tta flip (4x the native's model work)")
    c = p.add_argument_group("scale")
    c.add_argument("--scale-objects", type=int, default=20_000, help="objects of the small archive (the large one has 10x)")
    c.add_argument("--scale-series-slices", type=int, default=50, help="objects (32x32 slices) per series")
    c.add_argument("--scale-factor", type=int, default=10)
    c.add_argument("--scale-s3-objects", type=int, default=0,
                   help="also count the S3 requests of a first run and a re-run of this many objects on moto's server")
    q = p.add_argument_group("select")
    q.add_argument("--select-objects", type=int, default=20_000, help="objects of the archive (136 per study)")
    z = p.add_argument_group("zip")
    z.add_argument("--zip-objects", type=int, default=20_000, help="objects of the archive (--scale-series-slices per series)")
    w = p.add_argument_group("dicomweb")
    w.add_argument("--web-objects", type=int, default=5_000, help="instances loaded into Orthanc")
    w.add_argument("--dicomweb-concurrency", type=int, default=4, help="as unet segment's")
    i = p.add_argument_group("inference")
    i.add_argument("--infer-size", type=int, default=256)
    i.add_argument("--infer-filters", type=int, default=16, help="64 is the seed's (about 3 slices/s on 2 CPU cores)")
    i.add_argument("--infer-batch", type=int, default=16)
    i.add_argument("--infer-batches", type=int, default=4)
    q = p.add_argument_group("quality")
    q.add_argument("--quality-quick", action="store_true", help="a small task (64 mm field, 2 epochs) for a test")
    q.add_argument("--quality-size", type=int, default=None, help="seed input size = native patch size (default 64; quick 64)")
    q.add_argument("--quality-epochs", type=int, default=None, help="the same budget for both recipes (default 50; quick 2)")
    q.add_argument("--quality-seeds", type=int, default=None, help="training seeds per recipe (default: native 3, seed 1; quick 1)")
    q.add_argument("--quality-filters", type=int, default=16, help="base filters of the one network both recipes train")
    q.add_argument("--quality-batch", type=int, default=8)
    q.add_argument("--quality-recipes", default="seed,native", help="which recipes to run (comma-separated)")
    q.add_argument("--quality-seed-list", default=None, help="training seeds to run, e.g. 2 or 0,1 (instead of --quality-seeds)")
    q.add_argument("--quality-norm", default=None, choices=["none", "batch", "instance"],
                   help="the one network's normalisation (default: the bench's NETWORK)")
    q.add_argument("--quality-head-conv-filters", type=int, default=None,
                   help="the one network's 3x3 conv before the head (default: the bench's NETWORK)")
    g = p.add_argument_group("gpu")
    g.add_argument("--gpu-dry-run", action="store_true",
                   help="run every section on CPU at toy sizes, GPUs declared to a local Ray (tests the code, not the GPU)")
    add_ray_args(p)
    return p


def main(argv: list[str]) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    configure_output(verbose=False)  # a benchmark prints its own table
    if args.quick:
        _quick(args)
    work = args.workdir or tempfile.mkdtemp(prefix="unet-bench-")
    which = ["io", "train", "segment"] if args.which == "all" else [args.which]
    results = {name: importlib.import_module(f"jobs.bench.{MODULES.get(name, name)}").run(args, os.path.join(work, name)) for name in which}
    checks = [c for r in results.values() if isinstance(r, dict) for c in r.pop("checks", [])]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**results, "checks": [{"key": c.key, "measured": c.measured, "target": str(c.target), "ok": c.ok}
                                             for c in checks]}, f, indent=2)
    if args.check:
        from jobs.bench.common import report_checks

        if not checks:
            print(f"check: unet bench {args.which} has no targets (io, zip and select have)")
            return Exit.USAGE
        return Exit.OK if report_checks(checks) else Exit.SOME_FAILED
    return Exit.OK


QUICK = {"io_slices": 24, "io_repeats": 5, "zip_objects": 2_000, "select_objects": 4_080}


def _quick(args: argparse.Namespace) -> None:
    """--quick: the sizes CI checks at, unless given on the command line."""
    defaults = build_parser().parse_args([args.which])
    for key, value in QUICK.items():
        if getattr(args, key) == getattr(defaults, key):
            setattr(args, key, value)
