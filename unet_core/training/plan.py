"""The arithmetic of a data-parallel run, decided before any worker starts.

    StepPlan.for_run(...)   equal steps for every worker (docs/design.md, "Facts", 3: unequal step
                            counts hang the collectives), and the validation batches
    WorkerRange             --workers N or MIN-MAX (elastic: the run goes on with what the cluster has)
    size_line(...)          the line a run says when it starts or goes on at another size
    local_cpus(...)         logical CPUs of a local Ray instance for a run
    cpu_reservation(...)    CPUs each worker reserves, leaving Ray Data one for input
    training_summary(...)   the bundle's summary of a finished run (best epoch, speed, history)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from unet_core.errors import ConfigError

INPUT_CPUS = 1.0  # what Ray Data keeps for reading shards; less was seen to hang the run


@dataclass(frozen=True)
class WorkerRange:
    """How many data-parallel workers a run takes: `fixed` (min == max) or elastic (min < max)."""

    min: int
    max: int

    @classmethod
    def parse(cls, text: str) -> WorkerRange:
        """"N" or "MIN-MAX" with 1 <= MIN <= MAX; ConfigError naming the value otherwise."""
        low, dash, high = str(text).strip().partition("-")
        try:
            lo, hi = int(low), int(high) if dash else int(low)
        except ValueError:
            raise ConfigError(f"--workers {text!r}: a number of workers (2) or a range MIN-MAX (1-8)") from None
        if lo < 1:
            raise ConfigError(f"--workers {text!r}: at least 1 worker")
        if lo > hi:
            raise ConfigError(f"--workers {text!r}: MIN is more than MAX")
        return cls(lo, hi)

    @property
    def elastic(self) -> bool:
        return self.min < self.max

    def __str__(self) -> str:
        return f"{self.min}-{self.max}" if self.elastic else str(self.min)


@dataclass(frozen=True)
class StepPlan:
    steps_per_epoch: int
    val_batch_size: int
    val_steps: int

    @classmethod
    def for_run(cls, n_train: int, n_val: int, workers: int, batch_size: int) -> StepPlan:
        """Every worker runs the same number of full batches; ragged tails are dropped."""
        steps = n_train // (workers * batch_size)
        if steps < 1:
            raise ConfigError(f"{n_train} training slices cannot fill one global batch of "
                              f"{workers} x {batch_size}; lower --batch-size or --workers")
        val_batch = min(batch_size, n_val // workers)
        if val_batch < 1:
            raise ConfigError(f"{n_val} validation slices for {workers} workers: prepare with a larger --val-fraction")
        return cls(steps, val_batch, n_val // (workers * val_batch))


def size_line(world: int, most: int, global_batch: int, steps_per_epoch: int, first: bool) -> str:
    """What an elastic run says when it starts, and each time it goes on at another size:
    "went on with 1 worker (of up to 2): global batch 8, 12 steps per epoch"."""
    verb = "started with" if first else "went on with"
    return (f"{verb} {world} worker{'s' if world != 1 else ''} (of up to {most}): global batch "
            f"{global_batch}, {steps_per_epoch} steps per epoch")


def local_cpus(workers: int, cpus_per_worker: float, machine_cpus: int) -> int:
    """A local instance's logical CPUs: the machine's, or the workers' plus one for input when
    that is more (otherwise the workers hold every CPU and Ray Data's readers never start)."""
    return max(machine_cpus, math.ceil(workers * cpus_per_worker) + int(INPUT_CPUS))


def cpu_reservation(workers: int, cpus_per_worker: float, cluster_cpus: float) -> float:
    """CPUs each worker reserves: --cpus-per-worker, lowered so that INPUT_CPUS stay free for
    Ray Data's tasks (the run hangs in SplitCoordinator.get without them). The reservation is
    logical: TensorFlow still uses --cpus-per-worker threads."""
    if workers * cpus_per_worker <= cluster_cpus - INPUT_CPUS:
        return cpus_per_worker
    reserve = (cluster_cpus - INPUT_CPUS) / workers
    if reserve <= 0:
        raise ConfigError(f"{workers} workers do not fit a Ray cluster with {cluster_cpus:g} CPUs")
    return reserve


def training_summary(callbacks: dict, events: list[dict], meta: dict) -> dict:
    """A finished run's summary for bundle.json: the history, its events, the best epoch by
    validation Dice and the mean training speed."""
    history = callbacks["history"]
    if not history:
        raise ConfigError("the run's checkpoint holds no finished epoch")
    best = max(history, key=lambda h: h["val_dice_hard"])
    return {**meta, "history": history, "events": events, "best_epoch": callbacks["best_epoch"],
            "best_val_dice": callbacks["best_value"], "best_metrics": best, "stopped_early": callbacks["stopped_early"],
            "slices_per_second": float(sum(h["slices_per_second"] for h in history) / len(history))}
