"""The training run of one worker: epochs, checkpoints, resumption, early stopping, progress.

    LoopConfig      what every worker needs to know (typed; sent to Ray workers as a dict)
    Host            what the runtime provides: rank and world size, the strategy, this worker's
                    rows, `report(metrics, checkpoint folder or None)`, the checkpoint to resume
                    from, the progress sink. jobs/train_worker.py implements it with Ray Train;
                    `SerialHost` runs one in-process replica (the default strategy) for tests
    run_training    the loop itself

Every worker runs exactly `plan.steps_per_epoch` steps (docs/design.md, fact 3: unequal step
counts hang the collectives), and takes the same callback decisions, because every metric it
sees is reduced across all workers. The plan is made for the world size the worker group has
(`plan_for`): an elastic run (--workers MIN-MAX) that goes on with fewer or more workers keeps
the per-worker batch, so its global batch and steps per epoch follow the world size.

A seeded run repeats bit for bit (issue #30): the data order is a function of (seed, epoch, rank,
world) and the rows' content (unet_core/training/rows.py), patches and augmentation draw from
generators seeded the same way, and TensorFlow runs with op determinism on.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy as np

from unet_core.config import AugmentConfig, ModelConfig, TrainConfig
from unet_core.io import storage
from unet_core.training.callbacks import CallbackState, end_of_epoch
from unet_core.training.events import EpochDone, HistoryEvent, HistoryKind, Resumed, Sized, StepDone, TrainEvent
from unet_core.training.patches import sample_patches
from unet_core.training.plan import StepPlan
from unet_core.training.rows import WorkerRows, epoch_order

NATIVE = "native"  # PreprocessConfig.recipe whose slices are cut into patches
_VALIDATION_STREAM = 2**31 - 1  # the validation patches' generator: the same every epoch
_PATCH_STREAM = 1


@dataclass(frozen=True)
class LoopConfig:
    model: ModelConfig
    train: TrainConfig
    plan: StepPlan
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    recipe: str = "seed"  # the prepared data's PreprocessConfig.recipe
    threads: int = 0  # TensorFlow's intra-op threads per worker (0: its default)
    initial_weights: str | None = None  # a bundle, .keras or .weights.h5 (local or s3://)
    transfer: str = "full"
    freeze_encoder: bool = False
    # The prepared slices' counts: with them, each worker group plans for its own world size.
    n_train: int = 0
    n_val: int = 0


def plan_for(cfg: LoopConfig, world: int) -> StepPlan:
    """The step plan of a worker group of `world` workers: `StepPlan.for_run` over the counts (the
    same plan the driver made for a fixed --workers N), or `cfg.plan` when no counts are given."""
    if cfg.n_train:
        return StepPlan.for_run(cfg.n_train, cfg.n_val, world, cfg.train.batch_size)
    return cfg.plan


class Host(Protocol):
    rank: int
    world: int

    def make_strategy(self): ...  # a tf.distribute.Strategy, made before Keras initialises TF

    def rows(self, split: str) -> WorkerRows: ...  # "train" | "val": this worker's share

    def resume_folder(self) -> contextlib.AbstractContextManager[str | None]: ...

    def report(self, metrics: dict, checkpoint_folder: str | None) -> None: ...

    def progress(self, event: TrainEvent) -> None: ...  # rank 0's live events


def configure_tensorflow(threads: int) -> None:
    """Before the strategy: thread pools (fixed, so reductions split the same way on a busy
    machine) and deterministic kernels."""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, threads // 2))
    tf.config.experimental.enable_op_determinism()


def batches(rows: WorkerRows, batch_size: int, n_steps: int, order: np.ndarray, patch: int | None,
            rng: np.random.Generator | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Exactly `n_steps` batches (images (B, s, s, C), masks (B, s, s, 1), float32) of `rows` in
    `order`: whole slices, or with `patch` one patch per slice drawn with `rng`."""
    for i in range(n_steps):
        index = order[i * batch_size:(i + 1) * batch_size]
        if patch is None:
            yield rows.decode_stacked(index)
        else:
            p = sample_patches(*rows.decode(index), patch, rng)
            yield p.images, p.masks


def run_training(host: Host, cfg: LoopConfig) -> None:
    """Train from scratch or from `host.resume_folder()`, reporting every epoch."""
    strategy = host.make_strategy()
    import keras
    import tensorflow as tf

    from unet_core.model import build_unet
    from unet_core.model.losses import get_loss
    from unet_core.training.state import load_state, make_optimizer, save_state, set_learning_rate, set_precision
    from unet_core.training.step import DistributedSteps, accumulate, scores

    train_cfg, rank, world = cfg.train, host.rank, host.world
    set_precision(train_cfg)
    keras.utils.set_random_seed(train_cfg.seed)  # identical initial weights on every worker
    with strategy.scope():
        model = build_unet(cfg.model)
        if cfg.initial_weights:
            load_initial(model, cfg)
        optimizer = make_optimizer(train_cfg)
        optimizer.build(model.trainable_variables)

    callbacks = CallbackState(learning_rate=train_cfg.learning_rate)
    best_weights = model.get_weights()
    start_epoch, history = 0, []
    plan = plan_for(cfg, world)
    with contextlib.ExitStack() as stack:
        tb_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="tb-"))  # removed at the end (issue #32)
        with host.resume_folder() as folder:
            if folder:
                last, callbacks, best_weights, info = load_state(folder, model, optimizer)
                if os.path.isdir(os.path.join(folder, "tensorboard")):
                    shutil.copytree(os.path.join(folder, "tensorboard"), tb_dir, dirs_exist_ok=True)
                start_epoch = last + 1
                set_learning_rate(optimizer, callbacks.learning_rate)
                history = [HistoryEvent.from_json(e) for e in info.get("events", [])]
                history.append(HistoryEvent(HistoryKind.RESUMED, start_epoch))
                if int(info.get("world_size", world)) != world:  # optimizer and callbacks carry over as they are
                    history.append(HistoryEvent(HistoryKind.RESIZED, start_epoch, workers=world))
        if callbacks.stopped_early:
            start_epoch = train_cfg.epochs  # the restored run had already finished

        steps = DistributedSteps(
            model, optimizer, get_loss(train_cfg.loss, cfg.model.num_classes), strategy,
            global_batch_size=train_cfg.batch_size * world, num_classes=cfg.model.num_classes,
            augment=cfg.augment, jit_compile=train_cfg.xla,
        )
        writer = tf.summary.create_file_writer(tb_dir) if rank == 0 else None
        if writer is not None:
            stack.callback(writer.close)  # before the folder goes
        train_rows, val_rows = host.rows("train"), host.rows("val")
        patch = cfg.model.input_size if cfg.recipe == NATIVE else None
        if start_epoch:
            host.progress(Resumed(start_epoch))
        host.progress(Sized(world, train_cfg.batch_size * world, plan.steps_per_epoch, start_epoch))
        for epoch in range(start_epoch, train_cfg.epochs):
            t0 = last_told = time.perf_counter()
            total = None
            order = epoch_order(len(train_rows), train_cfg.seed, epoch, rank)
            rng = np.random.default_rng([train_cfg.seed, epoch, rank, _PATCH_STREAM])
            for i, (x, y) in enumerate(batches(train_rows, train_cfg.batch_size, plan.steps_per_epoch, order, patch, rng)):
                seed = tf.constant([train_cfg.seed * 100_003 + epoch, i * world + rank], tf.int64)
                total = accumulate(total, steps.train_step(tf.constant(x), tf.constant(y), seed))
                if time.perf_counter() - last_told > 1.0:
                    last_told = time.perf_counter()
                    host.progress(StepDone(epoch, i + 1, plan.steps_per_epoch))
            train_seconds = time.perf_counter() - t0
            vtotal = None
            vrng = np.random.default_rng([train_cfg.seed, _VALIDATION_STREAM, rank])
            for x, y in batches(val_rows, plan.val_batch_size, plan.val_steps, np.arange(len(val_rows)), patch, vrng):
                vtotal = accumulate(vtotal, steps.eval_step(tf.constant(x), tf.constant(y)))
            metrics = {**scores(total, "train_"), **scores(vtotal, "val_")}
            metrics["replica_weight_spread"] = replica_weight_spread(strategy, model)
            n_slices = plan.steps_per_epoch * train_cfg.batch_size * world
            metrics.update(epoch=epoch, learning_rate=callbacks.learning_rate, train_seconds=train_seconds,
                           slices_per_second=n_slices / max(train_seconds, 1e-9),
                           epoch_seconds=time.perf_counter() - t0)
            decision = end_of_epoch(callbacks, epoch, metrics, train_cfg)
            if decision.improved:
                best_weights = model.get_weights()
            if decision.new_learning_rate is not None:
                set_learning_rate(optimizer, decision.new_learning_rate)
            if decision.stop:
                history.append(HistoryEvent(HistoryKind.EARLY_STOPPING, epoch, callbacks.best_epoch))
                model.set_weights(best_weights)  # restore_best_weights
            host.progress(EpochDone(epoch, train_cfg.epochs, metrics, decision.new_learning_rate, decision.stop,
                                    callbacks.best_epoch, callbacks.best_value))
            if writer is not None:
                with writer.as_default(step=epoch):
                    for key, value in metrics.items():
                        if isinstance(value, float):
                            tf.summary.scalar(key, value)
                writer.flush()
            if rank == 0:
                with tempfile.TemporaryDirectory() as folder:
                    save_state(folder, model, optimizer, best_weights, callbacks, epoch,
                               {"events": [e.to_json() for e in history], "world_size": world})
                    shutil.copytree(tb_dir, os.path.join(folder, "tensorboard"))
                    host.report(metrics, folder)
            else:
                host.report(metrics, None)
            if decision.stop:
                break


def load_initial(model, cfg: LoopConfig) -> None:
    """Initial weights from a bundle, a .keras model file or a .weights.h5 file (local or s3)."""
    from unet_core.model.pretrained import load_pretrained

    source = cfg.initial_weights
    with tempfile.TemporaryDirectory() as tmp:
        if storage.exists(storage.join(source, "bundle.json")):
            source = storage.join(source, "model.keras")
        local = os.path.join(tmp, storage.basename(source))
        with open(local, "wb") as f:
            f.write(storage.read_bytes(source))
        load_pretrained(model, local, mode=cfg.transfer, freeze_encoder=cfg.freeze_encoder)


def replica_weight_spread(strategy, model) -> float:
    """max - min over replicas of a float64 checksum of all weights: 0.0 when every replica
    holds the same weights. Gathered through the strategy's own collectives."""
    import tensorflow as tf

    checksum = float(sum(np.sum(w, dtype=np.float64) + np.sum(np.abs(w), dtype=np.float64) for w in model.get_weights()))
    values = strategy.gather(strategy.run(lambda: tf.constant([checksum], tf.float64)), axis=0).numpy()
    return float(values.max() - values.min())


class SerialHost:
    """One in-process replica on TensorFlow's default strategy: the loop without Ray (tests, a
    laptop). Checkpoints are copied to `<folder>/checkpoint_<epoch>`; `resume` continues from
    the latest one there."""

    rank, world = 0, 1

    def __init__(self, rows: dict[str, WorkerRows], folder: str, resume: bool = False):
        self._rows, self.folder, self._resume = rows, folder, resume
        self.metrics: list[dict] = []
        self.events: list[TrainEvent] = []

    def make_strategy(self):
        import tensorflow as tf

        return tf.distribute.get_strategy()

    def rows(self, split: str) -> WorkerRows:
        return self._rows[split]

    def checkpoints(self) -> list[str]:
        if not os.path.isdir(self.folder):
            return []
        return sorted(os.path.join(self.folder, n) for n in os.listdir(self.folder) if n.startswith("checkpoint_"))

    @contextlib.contextmanager
    def resume_folder(self) -> Iterator[str | None]:
        found = self.checkpoints()
        yield found[-1] if self._resume and found else None

    def report(self, metrics: dict, checkpoint_folder: str | None) -> None:
        self.metrics.append(metrics)
        if checkpoint_folder is not None:
            # Copied under a temporary name, then renamed: never a half-written checkpoint.
            final = os.path.join(self.folder, f"checkpoint_{int(metrics['epoch']):06d}")
            partial = f"{final}.partial"
            shutil.copytree(checkpoint_folder, partial)
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(partial, final)

    def progress(self, event: TrainEvent) -> None:
        self.events.append(event)
