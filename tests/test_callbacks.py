from __future__ import annotations

from unet_core.config import TrainConfig
from unet_core.training.callbacks import CallbackState, end_of_epoch


def _run(values, **cfg):
    cfg = TrainConfig(**{"early_stopping_patience": 15, "reduce_lr_patience": 10, **cfg})
    state = CallbackState(learning_rate=cfg.learning_rate)
    decisions = [end_of_epoch(state, e, {"val_dice_hard": v}, cfg) for e, v in enumerate(values)]
    return state, decisions


def test_best_epoch_and_early_stopping_patience():
    values = [0.1, 0.5, 0.7] + [0.6] * 15
    state, decisions = _run(values)
    assert state.best_epoch == 2 and state.best_value == 0.7
    assert [d.stop for d in decisions].index(True) == 2 + 15
    assert decisions[2].improved and not decisions[3].improved


def test_reduce_lr_on_plateau_times_0_2_down_to_the_floor():
    state, decisions = _run([0.5] * 40, early_stopping_patience=100, learning_rate=1e-3, min_learning_rate=1e-5)
    lrs = [d.new_learning_rate for d in decisions if d.new_learning_rate]
    assert [e for e, d in enumerate(decisions) if d.new_learning_rate] == [10, 20, 30]
    assert lrs[0] == 2e-4 and abs(lrs[1] - 4e-5) < 1e-12 and lrs[2] == 1e-5  # floored
    assert state.learning_rate == 1e-5


def test_tiny_improvements_do_not_reset_the_plateau_counter():
    values = [0.5 + 1e-5 * i for i in range(12)]
    state, decisions = _run(values)
    assert decisions[10].new_learning_rate is not None  # improvements below min_delta 1e-4
    assert state.best_epoch == 11  # but each is still the best checkpoint


def test_state_roundtrip_keeps_counters():
    state, _ = _run([0.3, 0.2, 0.2])
    again = CallbackState.from_dict(state.to_dict())
    assert again == state and again.stop_wait == 2 and len(again.history) == 3
