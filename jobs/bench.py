"""`unet bench`: benchmarks measured side by side in one run, printed as ratios.

    unet bench io      header-scan files/s and full-decode slices/s on one core (DICOM CT series)
    unet bench train   (a) the full Ray Train pipeline with one worker vs (b) a plain single-process
                       Keras `model.fit` over in-memory arrays (the seed's way), same data and model
    unet bench all     every benchmark above

Nothing here is asserted in tests: results go to docs/benchmarks.md with the command.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from jobs.common import add_ray_args, run_main, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unet bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", choices=["io", "train", "segment", "all"])
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    g = p.add_argument_group("io")
    g.add_argument("--io-series", type=int, default=4)
    g.add_argument("--io-slices", type=int, default=64, help="slices per series (512 x 512)")
    t = p.add_argument_group("train")
    t.add_argument("--train-cases", type=int, default=8)
    t.add_argument("--train-size", type=int, default=128)
    t.add_argument("--train-slices", type=int, default=32, help="slices per case")
    t.add_argument("--train-filters", type=int, default=16)
    t.add_argument("--train-epochs", type=int, default=4)
    t.add_argument("--train-batch", type=int, default=8)
    s = p.add_argument_group("segment")
    s.add_argument("--seg-series", type=int, default=32, help="CT series of 256x256 slices in the archive (x4 for the large one)")
    s.add_argument("--seg-slices", type=int, default=48)
    s.add_argument("--seg-size", type=int, default=128, help="model input size")
    s.add_argument("--seg-filters", type=int, default=16)
    add_ray_args(p)
    return p


def main(argv: list[str]) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    work = args.workdir or tempfile.mkdtemp(prefix="unet-bench-")
    benches = {"io": bench_io, "train": bench_train}
    if args.which in ("segment", "all"):
        from jobs.bench_segment import bench_segment

        benches["segment"] = bench_segment
    which = list(benches) if args.which == "all" else [args.which]
    results = {name: benches[name](args, os.path.join(work, name)) for name in which}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def _rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def bench_io(args, work: str) -> dict:
    """One process, one core: what a single Ray task achieves."""
    from unet_core.io.dicom import HEADER_PREFIX_BYTES, group_series, read_series, scan_header
    from unet_core.synthetic import Phantom, SeriesSpec, dicom_series

    os.makedirs(work, exist_ok=True)
    files = []
    for s in range(args.io_series):
        spec = SeriesSpec(rows=512, columns=512, n_slices=args.io_slices, pixel_spacing=(0.7, 0.7), slice_step=2.5)
        for name, data in dicom_series(Phantom.random(s), spec, seed=s)[0]:
            path = os.path.join(work, f"s{s}", name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
            files.append(path)
    n = len(files)
    t = time.perf_counter()
    headers = []
    for path in files:
        with open(path, "rb") as f:
            headers.append(scan_header(f.read(HEADER_PREFIX_BYTES), path, size=os.path.getsize(path)))
    scan = time.perf_counter() - t
    groups, _ = group_series(headers)
    t = time.perf_counter()
    slices = 0
    for g in groups:
        blobs = [open(u, "rb").read() for u in g.uris]
        slices += read_series(g, blobs).shape[2]
    decode = time.perf_counter() - t
    out = {"files": n, "header_scan_files_per_s": _rate(n, scan), "decode_slices_per_s": _rate(slices, decode),
           "slice": "512x512 int16, explicit VR little endian"}
    print(f"io: header scan {out['header_scan_files_per_s']:.0f} files/s per core (first {HEADER_PREFIX_BYTES // 1024} KiB "
          f"of each object); full decode to HU {out['decode_slices_per_s']:.0f} slices/s per core ({n} files of 512x512)")
    return out


def bench_train(args, work: str) -> dict:
    import numpy as np
    import pyarrow.parquet as pq

    from jobs import prepare, train
    from unet_core.synthetic import write_training_set

    raw, prepared, bundle = (os.path.join(work, d) for d in ("raw", "prepared", "bundle"))
    write_training_set(raw, args.train_cases, size=args.train_size, n_slices=args.train_slices, seed=1)
    prepare.main(["--images", f"{raw}/images", "--masks", f"{raw}/masks", "--output", prepared, "--overwrite",
                  "--input-size", str(args.train_size), "--foreground-labels", "1", "--val-fraction", "0.125"])
    common = ["--base-filters", str(args.train_filters), "--batch-size", str(args.train_batch), "--epochs",
              str(args.train_epochs), "--no-augment", "--early-stopping-patience", "1000"]
    if args.address:
        common += ["--address", args.address]
    runs = {}
    for label, extra in (("ray_cached", []), ("ray_streaming", ["--cache-gb-per-worker", "0"])):
        out = os.path.join(bundle, label)
        t = time.perf_counter()
        train.main(["--data", prepared, "--output", out, "--workers", "1", "--cpus-per-worker", str(os.cpu_count()),
                    *common, *extra])
        wall = time.perf_counter() - t
        history = json.load(open(os.path.join(out, "history.json")))
        steady = history[1:]
        runs[label] = {"steady_slices_per_s": float(np.mean([h["slices_per_second"] for h in steady])),
                       "first_epoch_s": history[0]["epoch_seconds"], "wall_s": wall}

    # (b) the seed's way: one process, arrays in memory, model.fit.
    import keras

    from unet_core.config import ModelConfig
    from unet_core.model import build_unet
    from unet_core.model.losses import bce_loss
    from unet_core.training.shards import decode_rows

    table = pq.read_table(os.path.join(prepared, "slices", "split=train")).to_pydict()
    x, y = decode_rows(np.array(table["image"], object), np.array(table["mask"], object), args.train_size, 1)
    n = (len(x) // args.train_batch) * args.train_batch
    x, y = x[:n], y[:n]
    keras.utils.set_random_seed(0)
    model = build_unet(ModelConfig(input_size=args.train_size, base_filters=args.train_filters))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=bce_loss)
    times = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    model.fit(x, y, batch_size=args.train_batch, epochs=args.train_epochs, shuffle=True, verbose=0, callbacks=[EpochTimer()])
    plain = float(np.mean([n / t for t in times[1:]]))
    out = {"slices": n, "size": args.train_size, "base_filters": args.train_filters, "batch": args.train_batch,
           "plain_keras_slices_per_s": plain, **{f"{k}_{m}": v for k, r in runs.items() for m, v in r.items()}}
    out["ratio_cached"] = runs["ray_cached"]["steady_slices_per_s"] / plain
    out["ratio_streaming"] = runs["ray_streaming"]["steady_slices_per_s"] / plain
    print(f"train ({n} slices of {args.train_size}x{args.train_size}, {args.train_filters} base filters, batch "
          f"{args.train_batch}, steady-state epochs 2..{args.train_epochs}):")
    print(f"  (a) Ray Train, 1 worker, shard cached   {runs['ray_cached']['steady_slices_per_s']:7.1f} slices/s")
    print(f"  (a) Ray Train, 1 worker, streaming      {runs['ray_streaming']['steady_slices_per_s']:7.1f} slices/s")
    print(f"  (b) plain Keras model.fit in memory     {plain:7.1f} slices/s")
    print(f"  ratio (a)/(b): cached {out['ratio_cached']:.2f}, streaming {out['ratio_streaming']:.2f} (target >= 0.9)")
    print(f"  first epoch (Ray start, tracing, first streamed pass): {runs['ray_cached']['first_epoch_s']:.1f}s")
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
