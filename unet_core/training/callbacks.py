"""The seed's callbacks as one serialisable state machine, run identically on every worker.

- checkpoint on best validation Dice (mode max) at the bundle's threshold (`val_dice_hard`: the
  Dice of what inference will deliver; the seed's soft `dice_coef` is still reported as `val_dice`),
- early stopping after `early_stopping_patience` epochs without improvement, restoring the best
  weights (Keras' `EarlyStopping(restore_best_weights=True)`),
- learning rate x `reduce_lr_factor` after `reduce_lr_patience` epochs without improvement of at
  least 1e-4, never below `min_learning_rate` (Keras' `ReduceLROnPlateau`).

Every input is a globally reduced metric, so all workers take the same decisions. The state is a
plain dict in checkpoints, so a resumed run continues the same patience counters.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from unet_core.config import TrainConfig

MONITOR = "val_dice_hard"
PLATEAU_MIN_DELTA = 1e-4


@dataclass
class CallbackState:
    learning_rate: float
    best_value: float = float("-inf")
    best_epoch: int = -1
    stop_wait: int = 0
    plateau_best: float = float("-inf")
    plateau_wait: int = 0
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CallbackState":
        return cls(**d)


@dataclass(frozen=True)
class Decision:
    improved: bool
    new_learning_rate: float | None
    stop: bool


def end_of_epoch(state: CallbackState, epoch: int, metrics: dict, cfg: TrainConfig) -> Decision:
    """Update `state` with one epoch's metrics (which must hold MONITOR) and decide."""
    value = float(metrics[MONITOR])
    state.history.append({"epoch": epoch, "learning_rate": state.learning_rate, **metrics})
    improved = value > state.best_value
    if improved:
        state.best_value, state.best_epoch, state.stop_wait = value, epoch, 0
    else:
        state.stop_wait += 1

    new_lr = None
    if value > state.plateau_best + PLATEAU_MIN_DELTA:
        state.plateau_best, state.plateau_wait = value, 0
    else:
        state.plateau_wait += 1
        if state.plateau_wait >= cfg.reduce_lr_patience and state.learning_rate > cfg.min_learning_rate:
            new_lr = max(state.learning_rate * cfg.reduce_lr_factor, cfg.min_learning_rate)
            state.learning_rate, state.plateau_wait = new_lr, 0

    stop = state.stop_wait >= cfg.early_stopping_patience
    state.stopped_early = stop
    return Decision(improved, new_lr, stop)
