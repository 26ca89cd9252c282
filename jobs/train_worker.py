"""The Ray Train worker: Ray's side of `unet_core.training.loop.Host` (rank, world size, the
multi-worker strategy, this worker's rows, reports and checkpoints, rank 0's progress), and the
call into the loop. Every training decision is in unet_core/training/loop.py.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from unet_core.config import from_dict
from unet_core.io import storage
from unet_core.training.events import TrainEvent
from unet_core.training.loop import LoopConfig, configure_tensorflow, run_training
from unet_core.training.rows import WorkerRows, read_split


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's per-worker function. config: "loop" (LoopConfig as a dict), "data" (the
    prepared slices folder), "cache_gb_per_worker", "progress" (an EventBox actor, or None)."""
    cfg = from_dict(LoopConfig, config["loop"])
    # Threads and determinism before the strategy, and the strategy before anything (Keras
    # included) initialises TensorFlow's context in this process.
    configure_tensorflow(cfg.threads)
    run_training(RayHost(config, cfg), cfg)


class RayHost:
    def __init__(self, config: dict, cfg: LoopConfig):
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self._data, self._box = config["data"], config.get("progress")
        self._budget = int(float(config.get("cache_gb_per_worker") or 0) * 1024**3)
        self._size, self._channels = cfg.model.input_size, cfg.model.input_channels

    def make_strategy(self):
        import tensorflow as tf

        return tf.distribute.MultiWorkerMirroredStrategy()

    def rows(self, split: str) -> WorkerRows:
        return read_split(storage.join(self._data, f"split={split}"), self.rank, self.world, self._size,
                          self._channels, self._budget)

    @contextlib.contextmanager
    def resume_folder(self) -> Iterator[str | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield folder

    def report(self, metrics: dict, checkpoint_folder: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_folder) if checkpoint_folder else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def progress(self, event: TrainEvent) -> None:
        if self.rank == 0 and self._box is not None:  # rank 0 tells the driver where it stands
            self._box.put.remote(event)
