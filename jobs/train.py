"""`unet train`: data-parallel U-Net training with Ray Train over prepared slice shards.

TensorflowTrainer runs `--workers` workers (each `--gpus-per-worker` GPUs, `--cpus-per-worker`
CPUs) with MultiWorkerMirroredStrategy and the custom distributed step; global batch = per-worker
batch x workers. Every epoch reports metrics and a checkpoint to `--storage` (local or s3://);
`--resume` continues a run from its latest checkpoint (epoch, optimizer, callbacks), and
`--max-failures` restarts a run whose worker died, from that checkpoint, without a human.
The result is a model bundle at `--output`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from jobs.exits import Exit, run_main
from jobs.nodes import check_before_the_summary
from jobs.options import add_output_args, add_ray_args, apply_output_args, parse_with_config
from jobs.output import configure as configure_output
from jobs.output import log, say
from jobs.prepare import read_prepared
from jobs.progress import Timer
from jobs.quieting import import_tensorflow
from jobs.runtime import init_ray
from jobs.train_progress import EventBox, TrainWatcher
from jobs.train_worker import train_loop_per_worker
from unet_core.bundle import BundleInfo, save_bundle
from unet_core.config import AugmentConfig, ModelConfig, PreprocessConfig, TrainConfig, from_dict, to_dict
from unet_core.errors import ITEM_ERRORS, ConfigError, JobError
from unet_core.io import storage
from unet_core.plots import training_curves_png
from unet_core.report import training_report_html
from unet_core.training.loop import LoopConfig
from unet_core.training.plan import StepPlan, cpu_reservation, local_cpus, training_summary

FINGERPRINT = "fingerprint.json"


def build_parser() -> argparse.ArgumentParser:
    d, m = TrainConfig(), ModelConfig()
    p = argparse.ArgumentParser(prog="unet train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="output of `unet prepare` (local or s3://)")
    p.add_argument("--output", required=True, help="where the model bundle goes (local or s3://)")
    p.add_argument("--storage", default=None, help="Ray Train run storage for checkpoints and TensorBoard (default: <output>.runs)")
    p.add_argument("--run-name", default=None, help="name of the run under --storage (default: the bundle's name)")
    p.add_argument("--resume", action="store_true", help="continue the run --run-name from its latest checkpoint")
    p.add_argument("--config", help="JSON/YAML file of option values")
    s = p.add_argument_group("scaling")
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--gpus-per-worker", type=float, default=0)
    s.add_argument("--cpus-per-worker", type=float, default=1)
    s.add_argument("--memory-per-worker", type=float, default=None, help="GiB reserved per worker")
    s.add_argument("--cache-gb-per-worker", type=float, default=2.0,
                   help="most memory a worker's share of the encoded slices may take; a larger share is refused "
                        "before training (0: no limit)")
    s.add_argument("--max-failures", type=int, default=2, help="worker failures survived by restarting from the last checkpoint")
    r = p.add_argument_group("recipe (the seed's by default)")
    r.add_argument("--epochs", type=int, default=d.epochs)
    r.add_argument("--batch-size", type=int, default=d.batch_size, help="per worker")
    r.add_argument("--learning-rate", type=float, default=d.learning_rate)
    r.add_argument("--loss", default=d.loss, choices=["bce", "bce_dice", "dice", "cce", "cce_dice"])
    r.add_argument("--early-stopping-patience", type=int, default=d.early_stopping_patience)
    r.add_argument("--reduce-lr-patience", type=int, default=d.reduce_lr_patience)
    r.add_argument("--reduce-lr-factor", type=float, default=d.reduce_lr_factor)
    r.add_argument("--min-learning-rate", type=float, default=d.min_learning_rate)
    r.add_argument("--seed", type=int, default=d.seed,
                   help="initial weights, data order, patches and augmentation: the same seed, data, --workers and "
                        "--cpus-per-worker give the same weights, bit for bit")
    r.add_argument("--precision", default=d.precision, choices=["float32", "mixed_float16", "mixed_bfloat16"])
    r.add_argument("--xla", action="store_true", help="compile the step with XLA")
    r.add_argument("--no-augment", action="store_true", help="switch off the seed's augmentation")
    r.add_argument("--threshold", type=float, default=0.5, help="stored in the bundle for inference")
    a = p.add_argument_group("model")
    a.add_argument("--base-filters", type=int, default=m.base_filters)
    a.add_argument("--depth", type=int, default=m.depth)
    a.add_argument("--dropout", type=float, default=m.dropout)
    a.add_argument("--batch-norm", action="store_true")
    a.add_argument("--upsampling", default=m.upsampling, choices=["upsample_conv", "transpose"])
    a.add_argument("--num-classes", type=int, default=None, help="default: 1 for binary shards, else from --label-names")
    a.add_argument("--label-names", default=None, help="comma-separated, background first (multi-class)")
    w = p.add_argument_group("initial weights (transfer learning)")
    w.add_argument("--initial-weights", default=None, help="a bundle, .keras or .weights.h5 (local or s3://)")
    w.add_argument("--transfer", default="full", choices=["full", "encoder"])
    w.add_argument("--freeze-encoder", action="store_true")
    add_output_args(p)
    add_ray_args(p)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str]) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    args = parse_with_config(build_parser(), argv)
    configure_output(args.verbose)
    apply_output_args(args)

    manifest = read_prepared(args.data)
    pre = manifest["preprocess"]
    labels = args.label_names.split(",") if args.label_names else None
    num_classes = args.num_classes or (1 if manifest["binary"] else len(labels or []))
    if num_classes < 1:
        raise ConfigError("multi-class shards (prepared with --labels) need --num-classes or --label-names")
    labels = labels or (["background", "foreground"] if num_classes == 1 else [f"label_{i}" for i in range(num_classes)])
    model_cfg = ModelConfig(input_size=pre["input_size"], input_channels=1 + 2 * pre["context_slices"],
                            num_classes=num_classes, base_filters=args.base_filters, depth=args.depth,
                            dropout=args.dropout, batch_norm=args.batch_norm, upsampling=args.upsampling)
    train_cfg = TrainConfig(batch_size=args.batch_size, epochs=args.epochs, learning_rate=args.learning_rate,
                            loss=args.loss, early_stopping_patience=args.early_stopping_patience,
                            reduce_lr_patience=args.reduce_lr_patience, reduce_lr_factor=args.reduce_lr_factor,
                            min_learning_rate=args.min_learning_rate, seed=args.seed, precision=args.precision,
                            xla=args.xla)
    augment_cfg = AugmentConfig(enabled=not args.no_augment)

    n_train, n_val = manifest["counts"]["train"], manifest["counts"]["val"]
    plan = StepPlan.for_run(n_train, n_val, args.workers, args.batch_size)

    output = args.output.rstrip("/")
    storage_uri = (args.storage or f"{output}.runs").rstrip("/")
    run_name = args.run_name or storage.basename(output)
    run_exists = _run_exists(storage_uri, run_name)
    if run_exists and not args.resume:
        raise ConfigError(f"run {run_name!r} already exists in {storage_uri}; pass --resume to continue it, "
                          "or choose another --run-name")
    if args.resume and not run_exists:
        raise ConfigError(f"--resume: no run {run_name!r} with checkpoints in {storage_uri}")


    storage.probe_writable(output)  # a refused output fails before training, not after (exit 5)
    init_ray(args.address, args.num_cpus or local_cpus(args.workers, args.cpus_per_worker, os.cpu_count() or 1),
             verbose=args.verbose)
    import_tensorflow(args.verbose)  # quietly, before Ray Train's TensorFlow integration imports it
    import ray
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.tensorflow import TensorflowTrainer


    total_cpus = float(ray.cluster_resources().get("CPU", 0))
    reserve = cpu_reservation(args.workers, args.cpus_per_worker, total_cpus)
    if reserve != args.cpus_per_worker:
        log.info("reserving %.2f CPUs per worker (of %g) so that Ray Data keeps CPU for input", reserve, total_cpus)
    resources = {"CPU": reserve}
    if args.gpus_per_worker:
        resources["GPU"] = args.gpus_per_worker
    if args.memory_per_worker:
        resources["memory"] = int(args.memory_per_worker * 1024**3)
    run_fs, run_path = storage.resolve(storage_uri)
    loop = LoopConfig(model=model_cfg, train=train_cfg, plan=plan, augment=augment_cfg,
                      recipe=pre.get("recipe", "seed"), threads=int(args.cpus_per_worker),
                      initial_weights=args.initial_weights, transfer=args.transfer,
                      freeze_encoder=args.freeze_encoder)
    loop_config = {"loop": to_dict(loop), "data": storage.join(args.data, "slices"),
                   "cache_gb_per_worker": args.cache_gb_per_worker}

    box = ray.remote(num_cpus=0)(EventBox).remote()
    loop_config["progress"] = box
    trainer = TensorflowTrainer(
        train_loop_per_worker, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=args.gpus_per_worker > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=run_name, storage_path=run_path, storage_filesystem=run_fs,
                             failure_config=FailureConfig(max_failures=args.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    say(f"training on {n_train:,} train / {n_val:,} val slices: {args.workers} workers x batch {args.batch_size}, "
        f"{plan.steps_per_epoch} steps per epoch, up to {args.epochs} epochs")
    timer = Timer()
    try:
        with TrainWatcher(box):
            result = trainer.fit()
    except Exception as exc:  # noqa: BLE001 - Ray raises TrainingFailedError / WorkerGroupError
        raise JobError(f"training run {run_name!r} failed after {args.max_failures} restart(s): {exc}\n"
                       f"its checkpoints are in {storage_uri}/{run_name}; fix the cause and re-run with --resume") from exc
    if result.checkpoint is None:
        raise JobError("training finished without a checkpoint")

    info = write_bundle(result.checkpoint, output, model_cfg, pre, args.threshold, labels,
                        read_fingerprint(args.data),
                        {"train": to_dict(train_cfg), "augment": to_dict(augment_cfg), "workers": args.workers,
                         "data": args.data, "data_identity": manifest["identity"], "run": f"{storage_uri}/{run_name}"})
    check_before_the_summary()  # a node lost in the last seconds is still said
    t = info.training
    print(f"trained {len(t['history'])} epochs in {timer.seconds:.0f}s"
          f"{' (stopped early)' if t['stopped_early'] else ''}: best val Dice {t['best_val_dice']:.4f} at epoch "
          f"{t['best_epoch'] + 1}; {t['slices_per_second']:.1f} slices/s; bundle -> {output}")
    return Exit.OK


def _run_exists(storage_uri: str, run_name: str) -> bool:
    try:
        return any("checkpoint_" in e.uri for e in storage.list_files(storage.join(storage_uri, run_name)))
    except ITEM_ERRORS:
        return False


def read_fingerprint(prepared: str) -> dict:
    """`<prepared>/fingerprint.json` (written by `unet prepare` for the native recipe), or {} for
    prepared data made without one."""
    uri = storage.join(prepared, FINGERPRINT)
    if not storage.exists(uri):
        return {}
    fingerprint = json.loads(storage.read_bytes(uri))
    if not isinstance(fingerprint, dict):
        raise ConfigError(f"{uri}: a fingerprint is a JSON object, found {type(fingerprint).__name__}")
    return fingerprint


def write_bundle(checkpoint, output: str, model_cfg: ModelConfig, preprocess: dict, threshold: float,
                 labels: list[str], fingerprint: dict, meta: dict):
    """The bundle from a run's latest checkpoint: the best weights, the history, the curves, and
    the prepared data's fingerprint."""

    from unet_core.model import build_unet
    from unet_core.training.state import load_best_weights, read_state

    with checkpoint.as_directory() as folder:
        state = read_state(folder)
        model = build_unet(model_cfg)
        model.set_weights(load_best_weights(folder))
        tensorboard = {}
        tb = os.path.join(folder, "tensorboard")
        for root, _, files in os.walk(tb):
            for name in files:
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    tensorboard[os.path.join("tensorboard", os.path.relpath(path, tb))] = f.read()
    training = training_summary(state["callbacks"], state.get("events", []), meta)
    history = training["history"]
    info = BundleInfo(preprocess=from_dict(PreprocessConfig, preprocess), model=model_cfg, threshold=threshold,
                      label_names=labels, training=training, name=storage.basename(output),
                      fingerprint=fingerprint)

    extra = {"curves.png": training_curves_png(history, title=storage.basename(output)),
             "history.json": json.dumps(history, indent=1).encode(),
             "report.html": training_report_html(storage.basename(output), training), **tensorboard}
    save_bundle(output, model, info, extra)
    return info


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
