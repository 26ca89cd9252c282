"""`unet train`: data-parallel U-Net training with Ray Train over prepared slice shards.

TensorflowTrainer runs `--workers` workers (each `--gpus-per-worker` GPUs, `--cpus-per-worker`
CPUs) with MultiWorkerMirroredStrategy and the custom distributed step; global batch = per-worker
batch x workers. `--workers MIN-MAX` is elastic: the run starts with what the cluster has (at
least MIN), goes on from its last checkpoint with fewer workers when a node is lost and with more
when nodes come back, and says its size each time. A run waiting for its workers says so;
`--max-wait S` ends it (exit 5) when they do not come within S seconds. Every epoch reports
metrics and a checkpoint to `--storage` (local or s3://);
`--resume` continues a run from its latest checkpoint (epoch, optimizer, callbacks), and
`--max-failures` restarts a run whose worker died, from that checkpoint, without a human.
The result is a model bundle at `--output`.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import threading
from dataclasses import dataclass

from jobs.exits import Exit, run_main
from jobs.nodes import check_before_the_summary
from jobs.options import add_output_args, add_ray_args, apply_output_args, parse_with_config
from jobs.output import configure as configure_output
from jobs.output import log, say
from jobs.prepare import read_fingerprint, read_prepared
from jobs.progress import Timer
from jobs.quieting import import_tensorflow
from jobs.runtime import init_ray
from jobs.train_postprocess import postprocessing_on_validation
from jobs.train_progress import EventBox, TrainWatcher
from jobs.train_wait import ClusterWait, WaitedTooLong, WorkerNeed
from jobs.train_worker import train_loop_per_worker
from unet_core.bundle import INFO_FILE, MODEL_FILE, BundleInfo, bundle_identity, save_bundle
from unet_core.config import AugmentConfig, ModelConfig, PreprocessConfig, TrainConfig, from_dict, to_dict
from unet_core.errors import ConfigError, JobError, NotFoundError
from unet_core.io import storage
from unet_core.plots import training_curves_png
from unet_core.recipe.postprocess import describe as describe_postprocessing
from unet_core.report import training_report_html
from unet_core.tracking import BUNDLE_ARTIFACT, DEFAULT_EXPERIMENT, Tracker, TrackingConfig, display_uri, require_client
from unet_core.training.loop import LoopConfig
from unet_core.training.plan import StepPlan, WorkerRange, cpu_reservation, local_cpus, training_summary


def build_parser() -> argparse.ArgumentParser:
    d, m = TrainConfig(), ModelConfig()
    p = argparse.ArgumentParser(prog="unet train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="output of `unet prepare` (local or s3://)")
    p.add_argument("--output", required=True, help="where the model bundle goes (local or s3://)")
    p.add_argument("--storage", default=None, help="Ray Train run storage for checkpoints and TensorBoard (default: <output>.runs)")
    p.add_argument("--run-name", default=None, help="name of the run under --storage and in MLflow (default: the bundle's name)")
    p.add_argument("--resume", action="store_true", help="continue the run --run-name from its latest checkpoint")
    p.add_argument("--config", help="JSON/YAML file of option values")
    s = p.add_argument_group("scaling")
    s.add_argument("--workers", default="2", metavar="N|MIN-MAX",
                   help="N workers, or MIN-MAX: elastic, the run goes on with what the cluster has (at least MIN) "
                        "and grows again up to MAX; global batch and steps per epoch follow the number of workers")
    s.add_argument("--max-wait", type=float, default=None, metavar="S",
                   help="end the run (exit 5) when the cluster cannot give it its workers (MIN of MIN-MAX) within S "
                        "seconds, at the start or after a lost node (default: wait, saying so)")
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
    a.add_argument("--norm", default="none", choices=["none", "batch", "instance"], help="--batch-norm is --norm batch")
    a.add_argument("--head-conv-filters", type=int, default=m.head_conv_filters, help="the seed's 3x3 conv before the head; 0: none")
    a.add_argument("--upsampling", default=m.upsampling, choices=["upsample_conv", "transpose"])
    a.add_argument("--num-classes", type=int, default=None, help="default: 1 for binary shards, else from --label-names")
    a.add_argument("--label-names", default=None, help="comma-separated, background first (multi-class)")
    w = p.add_argument_group("initial weights (transfer learning)")
    w.add_argument("--initial-weights", default=None, help="a bundle, .keras or .weights.h5 (local or s3://)")
    w.add_argument("--transfer", default="full", choices=["full", "encoder"])
    w.add_argument("--freeze-encoder", action="store_true")
    t = p.add_argument_group("tracking (MLflow; pip install 'unet-ray[tracking]')")
    t.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking server (default: MLFLOW_TRACKING_URI); credentials from MLflow's own "
                        "variables (MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME / _PASSWORD)")
    t.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment")
    t.add_argument("--register-model", default=None, metavar="NAME",
                   help="register the bundle as a new version of this model (segment it with --model models:/NAME/N)")
    add_output_args(p)
    add_ray_args(p)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str]) -> int:
    return run_main(_main, argv)


@dataclass
class TrainRun:
    """One training run, decided from its options before Ray starts (what `unet tune` runs once
    per trial)."""

    args: argparse.Namespace
    manifest: dict
    labels: list[str]
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    augment_cfg: AugmentConfig
    plan: StepPlan
    output: str
    storage_uri: str
    run_name: str

    @property
    def pre(self) -> dict:
        return self.manifest["preprocess"]


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The options, with --workers as a WorkerRange (a bad value is a usage error, exit 2)."""
    args = parse_with_config(parser, argv)
    args.workers = WorkerRange.parse(args.workers)
    if args.max_wait is not None and args.max_wait <= 0:
        raise ConfigError(f"--max-wait {args.max_wait:g}: a number of seconds above 0")
    return args


def tracking_config(args: argparse.Namespace) -> TrackingConfig:
    cfg = TrackingConfig.from_options(args.tracking_uri, args.experiment, args.run_name, args.register_model)
    if cfg.uri:
        require_client()
    return cfg


def _main(argv: list[str]) -> int:
    args = parse_args(build_parser(), argv)
    configure_output(args.verbose)
    apply_output_args(args)
    tracking = tracking_config(args)
    run = plan_run(args)
    start_ray(args, run)
    try:
        fit_and_write(run, tracking=tracking)
    except WaitedTooLong as exc:
        log.error("%s", exc)
        return Exit.UNAVAILABLE  # 5: the cluster cannot give the run its workers within --max-wait
    return Exit.OK


def plan_run(args: argparse.Namespace, check_run: bool = True) -> TrainRun:
    """Every check that needs no Ray: the prepared data, the model, the step plan, the run's name
    (a run that exists needs --resume; --resume needs one), and a writable output. Local paths
    become absolute: Ray Train's workers (and Tune's trials) run in folders of their own."""
    for name in ("data", "output", "storage", "initial_weights"):
        if getattr(args, name, None):
            setattr(args, name, storage.absolute(getattr(args, name)))
    manifest = read_prepared(args.data)
    pre = manifest["preprocess"]
    # Label names: the command line's, else those the prepared data carries (dataset.json's).
    labels = args.label_names.split(",") if args.label_names else manifest.get("label_names")
    num_classes = args.num_classes or (1 if manifest["binary"] else len(labels or []))
    if num_classes < 1:
        raise ConfigError("multi-class shards (prepared with --labels) need --num-classes or --label-names")
    labels = labels or (["background", "foreground"] if num_classes == 1 else [f"label_{i}" for i in range(num_classes)])
    model_cfg = ModelConfig(input_size=pre["input_size"], input_channels=1 + 2 * pre["context_slices"],
                            num_classes=num_classes, base_filters=args.base_filters, depth=args.depth,
                            dropout=args.dropout, batch_norm=args.batch_norm, upsampling=args.upsampling,
                            norm=args.norm, head_conv_filters=args.head_conv_filters)
    train_cfg = TrainConfig(batch_size=args.batch_size, epochs=args.epochs, learning_rate=args.learning_rate,
                            loss=args.loss, early_stopping_patience=args.early_stopping_patience,
                            reduce_lr_patience=args.reduce_lr_patience, reduce_lr_factor=args.reduce_lr_factor,
                            min_learning_rate=args.min_learning_rate, seed=args.seed, precision=args.precision,
                            xla=args.xla)
    augment_cfg = AugmentConfig(enabled=not args.no_augment)
    n_train, n_val = manifest["counts"]["train"], manifest["counts"]["val"]
    # The plan of the largest group: a smaller one has more steps and the same batch, so it fits too.
    plan = StepPlan.for_run(n_train, n_val, args.workers.max, args.batch_size)

    output = args.output.rstrip("/")
    storage_uri = (args.storage or f"{output}.runs").rstrip("/")
    run_name = args.run_name or storage.basename(output)
    if check_run:
        run_exists = _run_exists(storage_uri, run_name)
        if run_exists and not args.resume:
            raise ConfigError(f"run {run_name!r} already exists in {storage_uri}; pass --resume to continue it, "
                              "or choose another --run-name")
        if args.resume and not run_exists:
            raise ConfigError(f"--resume: no run {run_name!r} with checkpoints in {storage_uri}")
        storage.probe_writable(output)  # a refused output fails before training, not after (exit 5)
    return TrainRun(args, manifest, labels, model_cfg, train_cfg, augment_cfg, plan, output, storage_uri, run_name)


def start_ray(args: argparse.Namespace, run: TrainRun) -> None:
    init_ray(args.address, args.num_cpus or local_cpus(args.workers.max, args.cpus_per_worker, os.cpu_count() or 1),
             verbose=args.verbose)
    import_tensorflow(args.verbose)  # quietly, before Ray Train's TensorFlow integration imports it


def fit_and_write(run: TrainRun, *, tracking: TrackingConfig, callbacks: list | None = None,
                  quiet: bool = False) -> BundleInfo:
    """Ray Train over the prepared slices, then the bundle from the best checkpoint; tracked in
    MLflow when `tracking.uri` is set (params first, each epoch as rank 0 reports it, the bundle
    and the registered version at the end). `callbacks` are Ray Train UserCallbacks (`unet tune`
    passes Tune's)."""
    import ray
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.tensorflow import TensorflowTrainer
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    args, plan, workers = run.args, run.plan, run.args.workers
    total_cpus = float(ray.cluster_resources().get("CPU", 0))
    reserve = cpu_reservation(workers.max, args.cpus_per_worker, total_cpus)
    if reserve != args.cpus_per_worker:
        log.info("reserving %.2f CPUs per worker (of %g) so that Ray Data keeps CPU for input", reserve, total_cpus)
    resources = {"CPU": reserve}
    if args.gpus_per_worker:
        resources["GPU"] = args.gpus_per_worker
    if args.memory_per_worker:
        resources["memory"] = int(args.memory_per_worker * 1024**3)
    run_fs, run_path = storage.resolve(run.storage_uri)
    loop = LoopConfig(model=run.model_cfg, train=run.train_cfg, plan=plan, augment=run.augment_cfg,
                      recipe=run.pre.get("recipe", "seed"), threads=int(args.cpus_per_worker),
                      initial_weights=args.initial_weights, transfer=args.transfer,
                      freeze_encoder=args.freeze_encoder, n_train=run.manifest["counts"]["train"],
                      n_val=run.manifest["counts"]["val"])
    loop_config = {"loop": to_dict(loop), "data": storage.join(args.data, "slices"),
                   "cache_gb_per_worker": args.cache_gb_per_worker}

    tracker = _open_tracker(run, tracking, resources, quiet)
    # On this process's node: an EventBox on a node that is lost would take every later event with it.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    box = ray.remote(num_cpus=0)(EventBox).options(scheduling_strategy=here).remote()
    loop_config["progress"] = box
    trainer = TensorflowTrainer(
        train_loop_per_worker, train_loop_config=loop_config,
        # (min, max): Ray Train's elastic scaling policy (docs/design.md, "Elastic training").
        scaling_config=ScalingConfig(num_workers=(workers.min, workers.max) if workers.elastic else workers.min,
                                     use_gpu=args.gpus_per_worker > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=run.run_name, storage_path=run_path, storage_filesystem=run_fs,
                             failure_config=FailureConfig(max_failures=args.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=callbacks or None),
    )
    n_train, n_val = run.manifest["counts"]["train"], run.manifest["counts"]["val"]
    if not quiet:
        steps = "steps per epoch as the workers" if workers.elastic else f"{plan.steps_per_epoch} steps per epoch"
        say(f"training on {n_train:,} train / {n_val:,} val slices: {workers} workers x batch "
            f"{args.batch_size}, {steps}, up to {args.epochs} epochs")
    timer = Timer()
    on_epoch = (lambda e: tracker.log_metrics(e.metrics, e.epoch)) if tracker.active else None
    wait = _cluster_wait(run, resources, quiet)
    try:
        with TrainWatcher(box, on_epoch=on_epoch, quiet=quiet, elastic_max=workers.max if workers.elastic else 0):
            if wait is None:
                result = trainer.fit()
            else:
                with wait:
                    result = _fit_unless_given_up(trainer, wait)
    except WaitedTooLong:
        tracker.close("KILLED")
        raise
    except Exception as exc:  # Ray raises TrainingFailedError / WorkerGroupError
        tracker.close("FAILED")
        raise JobError(f"training run {run.run_name!r} failed after {args.max_failures} restart(s): {exc}\n"
                       f"its checkpoints are in {run.storage_uri}/{run.run_name}; fix the cause and re-run with "
                       "--resume") from exc
    if result.checkpoint is None:
        tracker.close("FAILED")
        raise JobError("training finished without a checkpoint")

    info = write_bundle(result.checkpoint, run.output, run.model_cfg, run.pre, args.threshold, run.labels,
                        read_fingerprint(args.data),
                        {"train": to_dict(run.train_cfg), "augment": to_dict(run.augment_cfg),
                         "workers": str(workers) if workers.elastic else workers.min,
                         "data": args.data, "data_identity": run.manifest["identity"],
                         "run": f"{run.storage_uri}/{run.run_name}"})
    version = _log_bundle(run, tracker, tracking)
    tracker.close()
    if quiet:
        return info
    check_before_the_summary()  # a node lost in the last seconds is still said
    t = info.training
    print(f"trained {len(t['history'])} epochs in {timer.seconds:.0f}s"
          f"{' (stopped early)' if t['stopped_early'] else ''}: best val Dice {t['best_val_dice']:.4f} at epoch "
          f"{t['best_epoch'] + 1}; {t['slices_per_second']:.1f} slices/s; bundle -> {run.output}")
    if info.postprocessing:
        print(describe_postprocessing(info.postprocessing))
    if tracking.uri:
        if tracker.lost:
            print(f"tracking was lost ({tracker.lost}); the bundle is complete at {run.output}")
        else:
            print(f"tracked as run {tracker.run_id} in experiment {tracking.experiment!r} at "
                  f"{display_uri(tracking.uri)}" + (f"; registered as models:/{tracking.register_model}/{version}"
                                                     if version else ""))
    return info


def _cluster_wait(run: TrainRun, resources: dict, quiet: bool) -> ClusterWait | None:
    """The waiting line and --max-wait, for a run of its own (`unet tune`'s trials wait in Tune's
    queue)."""
    if quiet:
        return None
    need = WorkerNeed(run.args.workers, resources)
    return ClusterWait(need, run.args.max_wait, f"{run.storage_uri}/{run.run_name}", on_give_up=lambda: None)


def _fit_unless_given_up(trainer, wait: ClusterWait):
    """`trainer.fit()`, or WaitedTooLong once the wait gives up. With --max-wait, `fit()` runs in a
    thread of its own and this one watches: Ray Train's controller does not take its abort while it
    waits for a placement group (seen here: the abort call hung for minutes), so the job ends by
    itself, and Ray ends the run's controller, workers and placement group with the job."""
    if not wait.max_wait:
        return trainer.fit()
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread as it is
            outcome["error"] = exc

    thread = threading.Thread(target=fit, daemon=True, name="unet-train-fit")
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
        if wait.error is not None:
            raise wait.error
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _tracking_file(run: TrainRun) -> str:
    """Where a run keeps its MLflow run id, so that --resume continues the same MLflow run."""
    return f"{run.storage_uri}/{run.run_name}.tracking.json"


def _open_tracker(run: TrainRun, tracking: TrackingConfig, resources: dict, quiet: bool) -> Tracker:
    if not tracking.uri:
        return Tracker(tracking)
    import ray

    run_id = None
    if run.args.resume and storage.exists(_tracking_file(run)):
        run_id = json.loads(storage.read_bytes(_tracking_file(run))).get("run_id")
    cfg = dataclasses.replace(tracking, run_id=run_id, run_name=tracking.run_name or run.run_name)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    tags = {"unet.workers": str(run.args.workers), "unet.nodes": str(len(nodes)),
            "unet.worker_resources": json.dumps(resources, sort_keys=True),
            "unet.data_identity": str(run.manifest.get("identity")),
            "unet.fingerprint_digest": _digest(read_fingerprint(run.args.data) or {})}
    tracker = Tracker.open(cfg, tags=tags, warn=say)
    if tracker.run_id and not run_id:
        storage.write_bytes(_tracking_file(run), json.dumps({"run_id": tracker.run_id}).encode())
    options = {k: v for k, v in vars(run.args).items() if k not in ("config", "verbose")}
    tracker.log_params({"option": options, "plan": run.pre, "model": to_dict(run.model_cfg),
                        "steps": to_dict(run.plan)})
    return tracker


def _log_bundle(run: TrainRun, tracker: Tracker, tracking: TrackingConfig) -> str | None:
    """The bundle's files as the run's `bundle` artifact folder (curves.png also at the top),
    then, with --register-model, a new version of that model."""
    if not tracker.active:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, BUNDLE_ARTIFACT)
        os.makedirs(folder)
        for name in (INFO_FILE, MODEL_FILE, "report.html", "curves.png", "history.json"):
            uri = storage.join(run.output, name)
            if storage.exists(uri):
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(storage.read_bytes(uri))
        tracker.log_folder(folder, BUNDLE_ARTIFACT)
        tracker.log_file(os.path.join(folder, "curves.png"))
    if tracking.register_model:
        return tracker.register(tracking.register_model, bundle_identity(run.output))
    return None


def _digest(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16] if fingerprint else "none"


def _run_exists(storage_uri: str, run_name: str) -> bool:
    try:
        return any("checkpoint_" in e.uri for e in storage.list_files(storage.join(storage_uri, run_name)))
    except NotFoundError:
        return False


def write_bundle(checkpoint, output: str, model_cfg: ModelConfig, preprocess: dict, threshold: float,
                 labels: list[str], fingerprint: dict | None, meta: dict):
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
                      fingerprint=fingerprint or {})
    info.postprocessing = postprocessing_on_validation(model, info, meta.get("data"))  # before bundle.json

    extra = {"curves.png": training_curves_png(history, title=storage.basename(output)),
             "history.json": json.dumps(history, indent=1).encode(),
             "report.html": training_report_html(storage.basename(output), training), **tensorboard}
    save_bundle(output, model, info, extra)
    return info


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
