"""`unet bench train`: the full Ray Train pipeline with one worker against a plain single-process
Keras `model.fit` over in-memory arrays (the seed's way), same data and model."""
from __future__ import annotations

import json
import os
import time

import numpy as np

from jobs import prepare, train
from jobs.quieting import import_tensorflow
from unet_core.config import ModelConfig
from unet_core.synthetic import write_training_set
from unet_core.training.shards import decode_rows


def run(args, work: str) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq


    raw, prepared, bundle = (os.path.join(work, d) for d in ("raw", "prepared", "bundle"))
    write_training_set(raw, args.train_cases, size=args.train_size, n_slices=args.train_slices, seed=1)
    prepare.main(["--images", f"{raw}/images", "--masks", f"{raw}/masks", "--output", prepared, "--overwrite",
                  "--input-size", str(args.train_size), "--foreground-labels", "1", "--val-fraction", "0.125"])
    common = ["--base-filters", str(args.train_filters), "--batch-size", str(args.train_batch), "--epochs",
              str(args.train_epochs), "--no-augment", "--early-stopping-patience", "1000"]
    if args.address:
        common += ["--address", args.address]
    order = [("ray", [])]
    if args.train_tracking_uri:  # the same run, tracked: params, every epoch's metrics, the bundle as artifacts
        tracked = ("ray_tracked", ["--tracking-uri", args.train_tracking_uri, "--experiment", "unet-bench"])
        order = [("ray", []), tracked, tracked, ("ray", [])]  # A B B A: a drift of the machine's load cancels out
    load_before = os.getloadavg()[0]
    measured: dict[str, list[dict]] = {}
    for i, (label, extra) in enumerate(order):
        out = os.path.join(bundle, f"{label}_{i}")
        t = time.perf_counter()
        train.main(["--data", prepared, "--output", out, "--workers", "1", "--cpus-per-worker", str(os.cpu_count()),
                    *common, *extra])
        wall = time.perf_counter() - t
        history = json.load(open(os.path.join(out, "history.json")))
        steady = history[1:]
        measured.setdefault(label, []).append({
            "steady_slices_per_s": float(np.mean([h["slices_per_second"] for h in steady])),
            "first_epoch_s": history[0]["epoch_seconds"], "wall_s": wall})
    runs = {label: {key: float(np.mean([r[key] for r in rs])) for key in rs[0]} for label, rs in measured.items()}
    load = (load_before + os.getloadavg()[0]) / 2

    # (b) the seed's way: one process, arrays in memory, model.fit.

    import_tensorflow(verbose=False)
    import keras

    from unet_core.model import build_unet
    from unet_core.model.losses import bce_loss

    folder = os.path.join(prepared, "slices", "split=train")  # each file by itself: see unet_core/report.py
    table = pa.concat_tables([pq.ParquetFile(os.path.join(folder, f)).read() for f in sorted(os.listdir(folder))
                              if f.endswith(".parquet")]).to_pydict()
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
    out["ratio"] = runs["ray"]["steady_slices_per_s"] / plain
    print(f"train ({n} slices of {args.train_size}x{args.train_size}, {args.train_filters} base filters, batch "
          f"{args.train_batch}, steady-state epochs 2..{args.train_epochs}):")
    print(f"  (a) Ray Train, 1 worker                 {runs['ray']['steady_slices_per_s']:7.1f} slices/s")
    print(f"  (b) plain Keras model.fit in memory     {plain:7.1f} slices/s")
    print(f"  ratio (a)/(b): {out['ratio']:.2f} (target >= 0.9)")
    if "ray_tracked" in runs:
        tracked = runs["ray_tracked"]["steady_slices_per_s"]
        out["tracking_overhead"] = 1 - tracked / runs["ray"]["steady_slices_per_s"]
        out["runs"] = measured
        print(f"  (a) tracked in MLflow                   {tracked:7.1f} slices/s: {tracked / runs['ray']['steady_slices_per_s']:.2f}x "
              f"untracked; wall {runs['ray_tracked']['wall_s']:.0f}s against {runs['ray']['wall_s']:.0f}s")
        print("      runs in order (untracked, tracked, tracked, untracked): " + ", ".join(
            f"{r['steady_slices_per_s']:.1f}" for r in (measured["ray"][0], *measured["ray_tracked"], measured["ray"][1]))
            + " slices/s")
    out["load_average"] = load
    print(f"  machine load average (1 min) during the runs: {load:.1f} on {os.cpu_count()} CPUs")
    print(f"  first epoch (Ray start, tracing): {runs['ray']['first_epoch_s']:.1f}s")
    return out
