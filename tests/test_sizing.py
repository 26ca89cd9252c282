"""How a segment run is cut into tasks (unet_core/segmentation/sizing.py), from counts alone."""
from __future__ import annotations

from unet_core.segmentation import sizing


def test_volumes_in_flight_are_the_free_local_cpus_and_uncapped_on_a_cluster():
    assert sizing.volume_slots(None, on_cluster=False, slots=2, n_volumes=100) == 2
    assert sizing.volume_slots(None, on_cluster=False, slots=2, n_volumes=1) == 1
    assert sizing.volume_slots(None, on_cluster=True, slots=2, n_volumes=100) is None  # the autoscaler decides
    assert sizing.volume_slots(5, on_cluster=True, slots=2, n_volumes=100) == 5
    assert sizing.volume_slots(5, on_cluster=False, slots=2, n_volumes=3) == 3


def test_segment_tasks_are_bounded_whatever_the_archive():
    assert sizing.segment_blocks(3, 2) == 3 and sizing.segment_blocks(100, 2) == 8
    assert sizing.segment_blocks(4000, 2) == 125 and sizing.segment_blocks(10, 64) == 10
    assert sizing.segment_blocks(200_000, 2) == sizing.MAX_SEGMENT_TASKS
    assert sizing.segment_blocks(200_000, 512) == 2048  # four per slot on a large cluster


def test_scan_tasks_and_slots():
    assert sizing.scan_blocks(1, 2) == 1 and sizing.scan_blocks(10, 2) == 4
    assert sizing.scan_blocks(4096, 2) == sizing.SCAN_BLOCKS_PER_SLOT * 2  # at most this many per slot
    assert sizing.task_slots(3, predictors=1, num_gpus=0) == 2 and sizing.task_slots(3, 1, num_gpus=1) == 3
    assert sizing.task_slots(1, predictors=2, num_gpus=0) == 1


def test_predictors_and_local_cpus():
    assert sizing.predictor_counts(None, 2, 6) == (2, 6)
    assert sizing.predictor_counts(3, 1, None) == (3, 3)
    assert sizing.predictor_counts(None, 0, None) == (1, 1)
    assert sizing.local_cpus(2, predictors=1, num_gpus=0) == 3 and sizing.local_cpus(2, 4, num_gpus=1) == 2
