"""The Ray Train worker loop: wiring only. Each worker streams its equal shard of the slices,
runs the distributed step from `unet_core.training.step`, and reports metrics and checkpoints.

Every worker runs exactly `steps_per_epoch` steps (docs/design.md, fact 3: unequal step counts hang the
collectives), and takes the same callback decisions, because every metric it sees is reduced
across all workers.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np

from unet_core.config import AugmentConfig, ModelConfig, TrainConfig, from_dict
from unet_core.io import storage
from unet_core.training.callbacks import CallbackState, end_of_epoch
from unet_core.training.events import EpochDone, HistoryEvent, HistoryKind, Resumed, StepDone
from unet_core.training.rows import epoch_order, read_split


def train_loop_per_worker(config: dict) -> None:
    import tensorflow as tf

    # The strategy configures collective ops, which must happen before anything (Keras included)
    # initialises TensorFlow's context in this process.
    threads = int(config.get("cpus_per_worker") or 0)
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, threads // 2))
    # Seeded runs repeat bit for bit: deterministic kernels (and reductions in a fixed order).
    tf.config.experimental.enable_op_determinism()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()

    import keras
    import ray.train

    from unet_core.model import build_unet
    from unet_core.model.losses import get_loss
    from unet_core.training.state import (
        load_state,
        make_optimizer,
        save_state,
        set_learning_rate,
        set_precision,
    )
    from unet_core.training.step import DistributedSteps, accumulate, scores

    model_cfg = from_dict(ModelConfig, config["model"])
    train_cfg = from_dict(TrainConfig, config["train"])
    augment_cfg = from_dict(AugmentConfig, config["augment"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    set_precision(train_cfg)
    keras.utils.set_random_seed(train_cfg.seed)  # identical initial weights on every worker
    with strategy.scope():
        model = build_unet(model_cfg)
        if config.get("initial_weights"):
            _load_initial(model, config)
        optimizer = make_optimizer(train_cfg)
        optimizer.build(model.trainable_variables)

    callbacks = CallbackState(learning_rate=train_cfg.learning_rate)
    best_weights = model.get_weights()
    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    tb_dir = tempfile.mkdtemp(prefix="tb-")
    if checkpoint:
        with checkpoint.as_directory() as folder:
            last, callbacks, best_weights, info = load_state(folder, model, optimizer)
            if os.path.isdir(os.path.join(folder, "tensorboard")):
                shutil.copytree(os.path.join(folder, "tensorboard"), tb_dir, dirs_exist_ok=True)
        start_epoch = last + 1
        set_learning_rate(optimizer, callbacks.learning_rate)
        history = [HistoryEvent.from_json(e) for e in info.get("events", [])]
        history.append(HistoryEvent(HistoryKind.RESUMED, start_epoch))
    if callbacks.stopped_early:
        start_epoch = train_cfg.epochs  # the restored run had already finished

    steps = DistributedSteps(
        model, optimizer, get_loss(train_cfg.loss, model_cfg.num_classes), strategy,
        global_batch_size=train_cfg.batch_size * world, num_classes=model_cfg.num_classes,
        augment=augment_cfg, jit_compile=train_cfg.xla,
    )
    size, channels = model_cfg.input_size, model_cfg.input_channels
    writer = tf.summary.create_file_writer(tb_dir) if rank == 0 else None

    budget = int(float(config.get("cache_gb_per_worker") or 0) * 1024**3)
    train_rows = read_split(storage.join(config["data"], "split=train"), rank, world, size, channels, budget)
    val_rows = read_split(storage.join(config["data"], "split=val"), rank, world, size, channels, budget)

    # Rank 0 tells the driver where it stands (jobs/train.py prints one line per epoch from it).
    progress = config.get("progress") if rank == 0 else None
    if progress is not None and start_epoch:
        progress.put.remote(Resumed(start_epoch))
    for epoch in range(start_epoch, train_cfg.epochs):
        t0 = last_told = time.perf_counter()
        total = None
        for i, (x, y) in batches(train_rows, train_cfg.batch_size, config["steps_per_epoch"],
                                 epoch_order(len(train_rows), train_cfg.seed, epoch, rank)):
            seed = tf.constant([train_cfg.seed * 100_003 + epoch, i * world + rank], tf.int64)
            total = accumulate(total, steps.train_step(tf.constant(x), tf.constant(y), seed))
            if progress is not None and time.perf_counter() - last_told > 1.0:
                last_told = time.perf_counter()
                progress.put.remote(StepDone(epoch, i + 1, config["steps_per_epoch"]))
        train_seconds = time.perf_counter() - t0
        vtotal = None
        for _, (x, y) in batches(val_rows, config["val_batch_size"], config["val_steps"], np.arange(len(val_rows))):
            vtotal = accumulate(vtotal, steps.eval_step(tf.constant(x), tf.constant(y)))
        metrics = {**scores(total, "train_"), **scores(vtotal, "val_")}
        metrics["replica_weight_spread"] = replica_weight_spread(strategy, model)
        n_slices = config["steps_per_epoch"] * train_cfg.batch_size * world
        metrics.update(epoch=epoch, learning_rate=callbacks.learning_rate, train_seconds=train_seconds,
                       slices_per_second=n_slices / max(train_seconds, 1e-9), epoch_seconds=time.perf_counter() - t0)
        decision = end_of_epoch(callbacks, epoch, metrics, train_cfg)
        if decision.improved:
            best_weights = model.get_weights()
        if decision.new_learning_rate is not None:
            set_learning_rate(optimizer, decision.new_learning_rate)
        if decision.stop:
            history.append(HistoryEvent(HistoryKind.EARLY_STOPPING, epoch, callbacks.best_epoch))
            model.set_weights(best_weights)  # restore_best_weights
        if progress is not None:
            progress.put.remote(EpochDone(epoch, train_cfg.epochs, metrics, decision.new_learning_rate, decision.stop,
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
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)
        if decision.stop:
            break


def _load_initial(model, config: dict) -> None:
    """Initial weights from a bundle, a .keras model file or a .weights.h5 file (local or s3)."""
    from unet_core.model.pretrained import load_pretrained

    source = config["initial_weights"]
    with tempfile.TemporaryDirectory() as tmp:
        if storage.exists(storage.join(source, "bundle.json")):
            source = storage.join(source, "model.keras")
        local = os.path.join(tmp, storage.basename(source))
        with open(local, "wb") as f:
            f.write(storage.read_bytes(source))
        load_pretrained(model, local, mode=config.get("transfer", "full"),
                        freeze_encoder=bool(config.get("freeze_encoder")))


def batches(rows, batch_size: int, n_steps: int, order: np.ndarray):
    """Exactly `n_steps` batches of `rows` in `order` (docs/design.md, fact 3: unequal step
    counts across workers hang the collectives)."""
    for i in range(n_steps):
        yield i, rows.decode_stacked(order[i * batch_size:(i + 1) * batch_size])


def replica_weight_spread(strategy, model) -> float:
    """max - min over replicas of a float64 checksum of all weights: 0.0 when every replica
    holds the same weights. Gathered through the strategy's own collectives."""
    import tensorflow as tf

    checksum = float(sum(np.sum(w, dtype=np.float64) + np.sum(np.abs(w), dtype=np.float64) for w in model.get_weights()))
    values = strategy.gather(strategy.run(lambda: tf.constant([checksum], tf.float64)), axis=0).numpy()
    return float(values.max() - values.min())
