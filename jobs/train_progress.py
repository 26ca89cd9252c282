"""What `unet train` shows while Ray Train runs: rank 0's events, drained by the driver.

    EventBox        a Ray actor's body: rank 0 puts TrainEvents, the driver takes them
    TrainWatcher    a Ticker: a step progress display per epoch, one line per epoch, and
                    learning-rate changes, early stopping and resumption said once; an elastic
                    run's size when it starts and each time it goes on at another size
"""
from __future__ import annotations

import sys
from typing import Callable

from jobs.progress import Progress, Ticker
from unet_core.training.events import EpochDone, Resumed, Sized, StepDone, TrainEvent
from unet_core.training.plan import size_line


class EventBox:
    """A Ray actor's body (`ray.remote(num_cpus=0)(EventBox)`): workers `put` TrainEvents, the
    driver `take`s them. Rank 0 of `unet train` reports steps and epochs through one."""

    def __init__(self) -> None:
        self.events: list[TrainEvent] = []

    def put(self, event: TrainEvent) -> None:
        self.events.append(event)

    def take(self) -> list[TrainEvent]:
        out, self.events = self.events, []
        return out


def epoch_line(e: EpochDone) -> str:
    """One line per epoch: epoch/total, loss, Dice, val Dice, learning rate, slices/s, seconds."""
    m = e.metrics
    return (f"epoch {e.epoch + 1:>3}/{e.epochs}  loss {m.get('train_loss', float('nan')):.4f}  "
            f"dice {m.get('train_dice_hard', float('nan')):.4f}  val dice {m.get('val_dice_hard', float('nan')):.4f}  "
            f"lr {m.get('learning_rate', float('nan')):.2e}  {m.get('slices_per_second', 0.0):.1f} slices/s  "
            f"{m.get('epoch_seconds', 0.0):.0f}s")


class TrainWatcher(Ticker):
    """Drains an EventBox from a thread while `trainer.fit()` blocks: a step progress display per
    epoch, one line per epoch, and learning-rate changes, early stopping and resumption said once."""

    def __init__(self, box, stream=None, on_epoch: Callable[[EpochDone], None] | None = None, quiet: bool = False,
                 elastic_max: int = 0):
        super().__init__()
        self.box, self.stream = box, stream or sys.stderr
        self.on_epoch, self.quiet = on_epoch, quiet  # on_epoch: e.g. tracking each epoch as it ends
        self.elastic_max = elastic_max  # --workers MIN-MAX: MAX (0: a fixed number of workers)
        self.world: int | None = None  # the size of the last worker group seen
        self.epochs_seen: list[EpochDone] = []
        self._progress: Progress | None = None
        self._epoch = None

    def _handle(self, e: TrainEvent) -> None:
        if isinstance(e, EpochDone):
            self.epochs_seen.append(e)
            if self.on_epoch is not None:
                self.on_epoch(e)
        if self.quiet:
            return
        if isinstance(e, Sized):
            if self.elastic_max and e.world != self.world:
                self._close_progress()
                self._epoch = None  # the next step starts a display of its own
                self._print(size_line(e.world, self.elastic_max, e.global_batch, e.steps_per_epoch,
                                      first=self.world is None))
            self.world = e.world
        elif isinstance(e, Resumed):
            self._print(f"resumed from the last checkpoint: epoch {e.epoch + 1}")
        elif isinstance(e, StepDone):
            if self._epoch != e.epoch:
                self._close_progress()
                self._epoch = e.epoch
                self._progress = Progress(f"epoch {e.epoch + 1}", e.steps, "steps", stream=self.stream)
            self._progress.update(e.step)
        elif isinstance(e, EpochDone):
            self._close_progress()
            self._epoch = None
            self._print(epoch_line(e))
            if e.new_learning_rate is not None:
                self._print(f"  learning rate reduced to {e.new_learning_rate:.2e} (val Dice did not improve)")
            if e.stop:
                self._print(f"  stopped early: best val Dice {e.best_value:.4f} at epoch {e.best_epoch + 1}")

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def _close_progress(self) -> None:
        if self._progress is not None:
            self._progress.total = self._progress.done  # an epoch ends where its steps end
            self._progress.close()
            self._progress = None

    def tick(self) -> None:
        import ray

        try:
            events = ray.get(self.box.take.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - the display must never fail a training run
            return
        for e in events:
            self._handle(e)

    def finish(self) -> None:
        self.tick()
        self._close_progress()
