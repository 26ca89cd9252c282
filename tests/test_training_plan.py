"""The arithmetic of a data-parallel run (unet_core/training/plan.py), without Ray."""
from __future__ import annotations

import pytest

from unet_core.errors import ConfigError
from unet_core.training.plan import StepPlan, cpu_reservation, local_cpus, training_summary


def test_every_worker_runs_the_same_full_batches():
    plan = StepPlan.for_run(n_train=1000, n_val=90, workers=3, batch_size=16)
    assert plan == StepPlan(steps_per_epoch=20, val_batch_size=16, val_steps=1)  # 1000 // 48; 90 // 48
    small_val = StepPlan.for_run(n_train=100, n_val=10, workers=4, batch_size=8)
    assert small_val.val_batch_size == 2 and small_val.val_steps == 1


@pytest.mark.parametrize("n_train, n_val, match", [(10, 100, "global batch of 2 x 8"), (100, 1, "--val-fraction")])
def test_a_run_that_cannot_fill_a_batch_is_a_configuration_error(n_train, n_val, match):
    with pytest.raises(ConfigError, match=match):
        StepPlan.for_run(n_train, n_val, workers=2, batch_size=8)


def test_cpus_leave_one_for_ray_data():
    assert local_cpus(workers=2, cpus_per_worker=1, machine_cpus=2) == 3
    assert local_cpus(workers=1, cpus_per_worker=1, machine_cpus=8) == 8
    assert cpu_reservation(2, 1.0, cluster_cpus=3) == 1.0
    assert cpu_reservation(2, 1.0, cluster_cpus=2) == 0.5
    with pytest.raises(ConfigError, match="do not fit"):
        cpu_reservation(2, 1.0, cluster_cpus=1)


def test_the_summary_names_the_best_epoch_by_validation_dice():
    history = [{"val_dice_hard": v, "slices_per_second": s} for v, s in ((0.5, 10.0), (0.8, 20.0), (0.7, 30.0))]
    summary = training_summary({"history": history, "best_epoch": 1, "best_value": 0.8, "stopped_early": True},
                               [{"event": "early_stopping", "epoch": 2}], {"workers": 2})
    assert summary["best_metrics"] == history[1] and summary["best_val_dice"] == 0.8
    assert summary["slices_per_second"] == 20.0 and summary["workers"] == 2 and summary["stopped_early"]
