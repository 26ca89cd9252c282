"""What a training run tells about itself, as typed records.

Live events go from rank 0 to the driver while the run goes on (jobs/train_progress.py shows
them): `Sized` when a worker group starts (its world size, global batch and steps per epoch),
`StepDone` within an epoch, `EpochDone` at its end, `Resumed` when a run continues from a
checkpoint. The run's history keeps `HistoryEvent`s (resumption, early stopping) in its
checkpoints and in the bundle's training summary, as JSON objects with an "event" key.
"""
from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Resumed:
    epoch: int  # the first epoch of the continued run (0-based)


@dataclass(frozen=True)
class Sized:
    """A worker group started: an elastic run (--workers MIN-MAX) may start at any size in range."""

    world: int  # workers in this group
    global_batch: int  # per-worker batch x world
    steps_per_epoch: int
    epoch: int  # the first epoch this group runs (0-based)


@dataclass(frozen=True)
class StepDone:
    epoch: int
    step: int  # steps done in this epoch (1-based)
    steps: int  # steps per epoch


@dataclass(frozen=True)
class EpochDone:
    epoch: int
    epochs: int
    metrics: dict  # train_* / val_* scores, learning_rate, slices_per_second, epoch_seconds, ...
    new_learning_rate: float | None  # the plateau rule lowered it for the next epoch
    stop: bool  # early stopping: no further epoch
    best_epoch: int
    best_value: float


TrainEvent = Sized | Resumed | StepDone | EpochDone


class HistoryKind(enum.StrEnum):
    RESUMED = "resumed"
    EARLY_STOPPING = "early_stopping"
    RESIZED = "resized"  # an elastic run went on from a checkpoint with another number of workers


@dataclass(frozen=True)
class HistoryEvent:
    """One entry of a run's history ("events" in bundle.json)."""

    event: HistoryKind
    epoch: int  # resumed, resized: the first epoch run again; early stopping: the last epoch run
    best_epoch: int | None = None
    time: float = field(default_factory=time.time)
    workers: int | None = None  # resized: the new number of workers

    def to_json(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        d["event"] = self.event.value
        if self.event == HistoryKind.RESUMED:
            d["from_epoch"] = d.pop("epoch")  # the stored name, kept for bundles already written
        return d

    @classmethod
    def from_json(cls, d: dict) -> HistoryEvent:
        kind = HistoryKind(d["event"])
        epoch = d.get("from_epoch", d.get("epoch", 0)) if kind == HistoryKind.RESUMED else d.get("epoch", 0)
        return cls(kind, int(epoch), d.get("best_epoch"), float(d.get("time", 0.0)), d.get("workers"))
