"""`unet bench inference`: the predictor's slices/s on this machine (CPU or one GPU), side by side
in one run: float32, float32 + XLA, mixed_float16 and mixed_bfloat16, same bundle, same input.
Decides whether `--xla` / `--precision` pay off at inference here (docs/benchmarks.md)."""
from __future__ import annotations

import os
import time

import numpy as np

from jobs.bench.common import make_bundle
from unet_core.inference import SlicePredictor

VARIANTS = (("float32", "float32", False), ("float32 + XLA", "float32", True),
            ("mixed_float16", "mixed_float16", False), ("mixed_bfloat16", "mixed_bfloat16", False))


def run(args, work: str) -> dict:



    bundle = os.path.join(work, "bundle")
    make_bundle(bundle, args.infer_size, args.infer_filters)
    x = np.random.default_rng(0).random((args.infer_batch * args.infer_batches, args.infer_size, args.infer_size, 1))
    x = x.astype(np.float16)
    out, reference = {}, None
    for label, precision, xla in VARIANTS:
        predictor = SlicePredictor(bundle, batch_size=args.infer_batch, precision=precision, xla=xla)
        predictor.warm_up()
        predictor.predict(x[:args.infer_batch])
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            prob = predictor.predict(x)
            best = min(best, time.perf_counter() - t)
        prob = prob.astype(np.float32)
        reference = prob if reference is None else reference
        out[label] = {"slices_per_s": len(x) / best, "max_abs_diff_vs_float32": float(np.abs(prob - reference).max())}
    base = out["float32"]["slices_per_s"]
    print(f"inference ({args.infer_size}x{args.infer_size}, {args.infer_filters} base filters, batch {args.infer_batch}, "
          f"{len(x)} slices, best of 3; {os.cpu_count()} CPU cores or the visible GPU)")
    for label, r in out.items():
        print(f"  {label:<16}{r['slices_per_s']:8.1f} slices/s  {r['slices_per_s'] / base:5.2f}x   "
              f"max |p - p_float32| {r['max_abs_diff_vs_float32']:.4f}")
    return out
