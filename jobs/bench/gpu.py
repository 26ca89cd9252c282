"""`unet bench gpu`: the one command for the first machine with NVIDIA GPUs (`make bench-gpu`).

    single GPU   training images/s of the seed U-Net (256x256, batch 16) through the training step
                 the Ray Train workers run: float32 against mixed_float16 + XLA; inference
                 slices/s at batch 64 through the predictor's code: float32 against mixed_float16
    multi GPU    `unet train` through Ray Train with 1, 2, ..., N workers of one GPU each
                 (mixed_float16 + XLA): images/s and scaling efficiency
    end to end   `unet segment --num-gpus 1` on a synthetic CT archive: slices/s, with GPU
                 utilisation sampled through nvidia-smi every 0.5 s
    recipes      `unet bench segment`'s recipe comparison on one GPU (mixed_float16, batch 64):
                 the seed recipe (each 512 x 512 slice at 0.7 mm resized to 256) against the
                 native one (256 x 256 tiles at 0.8 mm, 9 a slice), source slices/s side by side,
                 the model's share and the host's (issue #30's target: native >= 0.5x the seed)

Published figures are printed beside its own, with their input sizes. Without a GPU it says so in
one line and exits 0. `--gpu-dry-run` runs every section on CPU at toy sizes through the same code
(dtype policies, Ray's GPU accounting with GPUs declared to a local Ray, the predictors' placement):
what the tests run; its numbers are not GPU figures.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np

from jobs import prepare, segment, train
from jobs.bench.common import make_bundle, write_ct_archive
from jobs.bench.segment import RecipeCase, compare_recipes, print_recipes
from jobs.progress import Ticker
from jobs.quieting import import_tensorflow
from jobs.runtime import init_ray
from unet_core.config import AugmentConfig, ModelConfig, TrainConfig
from unet_core.inference import SlicePredictor
from unet_core.segmentation.summary import RunSummary
from unet_core.synthetic import write_training_set

REFERENCES = [
    "NVIDIA DeepLearningExamples TF2 UNet_Medical, A100 80GB, AMP: 141 img/s training at batch 8, "
    "462.79 img/s inference at batch 16, input 572x572 (a different U-Net: 2 classes, valid padding)",
    "Ray Train, TensorFlow: 0.7% overhead against native distributed TensorFlow (Ray's published benchmark)",
]


def visible_gpus() -> list[str]:
    import_tensorflow(verbose=False)
    import tensorflow as tf

    return [d.name for d in tf.config.list_physical_devices("GPU")]


class GpuSampler(Ticker):
    """GPU utilisation (%) sampled through nvidia-smi; empty when there is no nvidia-smi."""

    def __init__(self, interval: float = 0.5):
        super().__init__()
        self.every, self.samples = interval, []
        self.available = shutil.which("nvidia-smi") is not None

    def tick(self) -> None:
        if not self.available:
            return
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5).stdout
            self.samples.append([float(v) for v in out.split()])
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass

    def mean(self) -> float | None:
        flat = [v for s in self.samples for v in s]
        return float(np.mean(flat)) if flat else None


def train_rate(size: int, filters: int, batch: int, precision: str, xla: bool, steps: int, warmup: int) -> float:
    """Images/s of the distributed training step (the one Ray Train workers run) on one device."""

    import_tensorflow(verbose=False)
    import keras
    import tensorflow as tf

    from unet_core.model import build_unet
    from unet_core.model.losses import get_loss
    from unet_core.training.state import make_optimizer, set_precision
    from unet_core.training.step import DistributedSteps, accumulate, scores

    cfg = TrainConfig(precision=precision, xla=xla)
    set_precision(cfg)
    try:
        keras.utils.set_random_seed(0)
        model = build_unet(ModelConfig(input_size=size, base_filters=filters))
        optimizer = make_optimizer(cfg)
        step = DistributedSteps(model, optimizer, get_loss("bce_dice", 1), tf.distribute.get_strategy(), batch, 1,
                                AugmentConfig(enabled=False), jit_compile=xla)
        rng = np.random.default_rng(0)
        x = tf.constant(rng.random((batch, size, size, 1), np.float32))
        y = tf.constant((rng.random((batch, size, size, 1)) > 0.7).astype(np.float32))
        for i in range(warmup):
            scores(accumulate(None, step.train_step(x, y, tf.constant([0, i], tf.int64))))
        t = time.perf_counter()
        for i in range(steps):
            out = step.train_step(x, y, tf.constant([1, i], tf.int64))
        scores(accumulate(None, out))  # waits for the device
        return steps * batch / (time.perf_counter() - t)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def inference_rate(bundle: str, batch: int, precision: str, batches: int) -> float:
    """Slices/s of the predictor's code path (`SlicePredictor`, as in a predictor actor)."""

    predictor = SlicePredictor(bundle, batch_size=batch, precision=precision)
    predictor.warm_up()
    size = predictor.info.preprocess.input_size
    x = np.random.default_rng(0).random((batch * batches, size, size, 1)).astype(np.float16)
    predictor.predict(x[:batch])
    t = time.perf_counter()
    predictor.predict(x)
    return len(x) / (time.perf_counter() - t)


def single_device_main(params: str) -> None:
    """The single-device sections (run as a child process by `run`); prints one JSON line."""
    p = json.loads(params)
    for gpu in __import__("tensorflow").config.list_physical_devices("GPU"):
        __import__("tensorflow").config.experimental.set_memory_growth(gpu, True)
    out = {
        "train_float32": train_rate(p["size"], p["filters"], p["batch"], "float32", False, p["steps"], 3),
        "train_mixed_xla": train_rate(p["size"], p["filters"], p["batch"], "mixed_float16", p["xla"], p["steps"], 3),
        "infer_float32": inference_rate(p["bundle"], p["ibatch"], "float32", 4),
        "infer_mixed": inference_rate(p["bundle"], p["ibatch"], "mixed_float16", 4),
    }
    out["recipes"] = compare_recipes(RecipeCase(**p["recipes"]), os.path.join(p["work"], "recipes"))
    print(json.dumps(out))


def _multi_gpu(work: str, n_gpus: int, size: int, filters: int, batch: int, epochs: int, dry: bool) -> dict:
    raw, prepared = os.path.join(work, "raw"), os.path.join(work, "prepared")
    write_training_set(raw, 4 if dry else 16, size=size, n_slices=8 if dry else 32, seed=1)
    prepare.main(["--images", f"{raw}/images", "--masks", f"{raw}/masks", "--output", prepared, "--overwrite",
                  "--input-size", str(size), "--foreground-labels", "1", "--val-fraction", "0.25"])
    rates = {}
    for workers in range(1, n_gpus + 1):
        out = os.path.join(work, f"bundle-{workers}")
        train.main(["--data", prepared, "--output", out, "--workers", str(workers), "--gpus-per-worker", "1",
                    "--cpus-per-worker", "1", "--base-filters", str(filters), "--batch-size", str(batch),
                    "--epochs", str(epochs), "--no-augment", "--early-stopping-patience", "1000",
                    "--precision", "mixed_float16", *([] if dry else ["--xla"])])
        history = json.load(open(os.path.join(out, "history.json")))
        steady = history[1:] or history
        rates[workers] = float(np.mean([h["slices_per_second"] for h in steady]))
    return {"images_per_s": rates, "efficiency": {n: r / (n * rates[1]) for n, r in rates.items()}}


def _ray_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def _end_to_end(work: str, n_gpus: int, series: int, rows: int, slices: int, size: int, filters: int) -> dict:
    archive, bundle, out = (os.path.join(work, d) for d in ("archive", "bundle", "out"))
    write_ct_archive(archive, series, rows, slices)
    make_bundle(bundle, size, filters)
    with GpuSampler() as gpu:
        segment.main(["--input", archive, "--model", bundle, "--output", out, "--overwrite", "--num-gpus", "1",
                      "--min-predictors", "1", "--max-predictors", str(n_gpus), "--precision", "mixed_float16",
                      "--batch-size", "64"])
    summary = RunSummary.read(out)
    return {"slices_per_s": summary.slices_now / summary.total_seconds, "volumes": summary.segmented_now,
            "gpu_utilisation_mean": gpu.mean(), "nvidia_smi": gpu.available}


def run(args, work: str) -> dict:
    gpus = visible_gpus()
    dry = args.gpu_dry_run
    if not gpus and not dry:
        print("gpu: no NVIDIA GPU is visible to TensorFlow on this machine; nothing measured "
              "(`unet bench gpu --gpu-dry-run` runs the same code on CPU)")
        return {"gpus": 0}
    n = len(gpus) if gpus else 2  # GPUs declared to Ray in a dry run
    # Full sizes on a GPU; toy sizes for a dry run on CPU (the same code paths).
    size, filters, batch, ibatch, steps = (256, 64, 16, 64, 50) if not dry else (32, 4, 4, 8, 3)
    os.makedirs(work, exist_ok=True)
    out: dict = {"gpus": gpus, "dry_run": dry}

    # The single-device sections run in a child process: its GPU memory is released before the
    # Ray Train workers and predictors need the same GPUs.
    bundle = os.path.join(work, "bundle")
    make_bundle(bundle, size, filters)
    # The recipe comparison at a GPU's sizes, or a dry run's toy analogue (9 tiles a slice too).
    recipes = RecipeCase(batch=ibatch, slices=64, precision="mixed_float16") if not dry else \
        RecipeCase(rows=64, size=32, filters=4, slices=4, batch=4, precision="mixed_float16")
    params = {"size": size, "filters": filters, "batch": batch, "ibatch": ibatch, "steps": steps, "xla": not dry,
              "bundle": bundle, "recipes": asdict(recipes), "work": work}
    child = subprocess.run([sys.executable, "-c", "import sys; from jobs.bench.gpu import single_device_main; "
                            "single_device_main(sys.argv[1])", json.dumps(params)], capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"the single-device benchmark failed: {child.stderr[-3000:]}")
    out.update(json.loads(child.stdout.strip().splitlines()[-1]))

    # A dry run declares GPUs to a local Ray, so that Ray's GPU accounting and placement run
    # (Ray refuses declared GPUs that CUDA_VISIBLE_DEVICES hides; TensorFlow finds none either way).
    if dry and not gpus:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    init_ray(args.address, args.num_cpus or os.cpu_count(), num_gpus=None if gpus else n, verbose=False)
    import ray

    # GPUs free for workers: all of a local machine's; on a cluster (`unet submit
    # --entrypoint-num-gpus 1 -- bench gpu`) the cluster's, less the one this driver holds.
    n = max(1, int(ray.available_resources().get("GPU", 0)))
    out["multi_gpu"] = _multi_gpu(os.path.join(work, "train"), n, size, filters, batch, 3 if dry else 4, dry)
    out["end_to_end"] = _end_to_end(os.path.join(work, "segment"), n, 2 if dry else 32, 64 if dry else 512,
                                     8 if dry else 96, size, filters)

    label = f"{n} GPUs: {', '.join(gpus)}" if gpus else f"DRY RUN on CPU with {n} GPUs declared to Ray: not GPU figures"
    print(f"gpu ({label})")
    print(f"  single device, seed U-Net {size}x{size} ({filters} base filters)")
    mixed = "mixed_float16" + ("" if dry else " + XLA")
    print(f"    training, batch {batch:<4}   float32 {out['train_float32']:8.1f} img/s   {mixed} "
          f"{out['train_mixed_xla']:8.1f} img/s   ({out['train_mixed_xla'] / out['train_float32']:.2f}x)")
    print(f"    inference, batch {ibatch:<3}  float32 {out['infer_float32']:8.1f} sl/s    mixed_float16 "
          f"{out['infer_mixed']:8.1f} sl/s    ({out['infer_mixed'] / out['infer_float32']:.2f}x)")
    print_recipes(out["recipes"])
    m = out["multi_gpu"]
    print("  Ray Train, one GPU per worker (mixed_float16" + ("" if dry else " + XLA") + ")")
    for workers, rate in m["images_per_s"].items():
        print(f"    {workers} worker(s)  {rate:8.1f} img/s   scaling efficiency {m['efficiency'][workers]:.0%}")
    out["ray_gpus"] = _ray_gpus()
    e = out["end_to_end"]
    util = f"{e['gpu_utilisation_mean']:.0f}%" if e["gpu_utilisation_mean"] is not None else "not sampled (no nvidia-smi)"
    print(f"  end to end, unet segment --num-gpus 1: {e['slices_per_s']:.1f} slices/s over {e['volumes']} volumes; "
          f"mean GPU utilisation {util}")
    print("  published figures (other inputs; compare with care):")
    for ref in REFERENCES:
        print(f"    {ref}")
    return out
