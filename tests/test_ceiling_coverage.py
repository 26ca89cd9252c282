"""The coverage ceiling: each class's covered fraction of every model pixel, back as segment takes
probabilities back. It is the truth at the source resolution, and it keeps the thin shells and
vessels that the hard-label ceiling loses on a coarser grid."""
from __future__ import annotations

import numpy as np

from unet_core.config import PreprocessConfig
from unet_core.evaluation import dice
from unet_core.recipe.ceiling import area_weights, ceiling_labels, coverage_ceiling_labels
from unet_core.synthetic_quality import CORTEX, QualityPhantom, render


def test_area_weights_are_the_covered_fractions():
    w = area_weights(5, 2)  # output pixel 0 covers input 0, 1 and half of 2
    np.testing.assert_allclose(w, [[0.4, 0.4, 0.2, 0, 0], [0, 0, 0.2, 0.4, 0.4]])
    np.testing.assert_allclose(area_weights(7, 3).sum(axis=1), 1.0)
    np.testing.assert_allclose(area_weights(4, 4), np.eye(4))


def test_coverage_ceiling_is_the_truth_at_the_source_resolution_and_above_the_hard_one_below_it():
    _, labels, _ = render(QualityPhantom.random(5, fov=64.0), 0.5, n_slices=2, seed=0)
    truth = np.moveaxis(labels, 2, 0)  # (2, 128, 128)
    binary = (truth > 0).astype(np.uint8)
    for pre in (PreprocessConfig(input_size=128), PreprocessConfig(recipe="native", target_spacing=0.5)):
        np.testing.assert_array_equal(coverage_ceiling_labels(binary, (0.5, 0.5), pre), binary)
        np.testing.assert_array_equal(coverage_ceiling_labels(truth, (0.5, 0.5), pre), truth)
    for pre in (PreprocessConfig(input_size=56), PreprocessConfig(recipe="native", target_spacing=0.8)):
        hard = dice(ceiling_labels(binary, (0.5, 0.5), pre), binary)
        covered = dice(coverage_ceiling_labels(binary, (0.5, 0.5), pre), binary)
        assert hard < covered < 1.0, (pre.recipe, hard, covered)
    coarse = PreprocessConfig(recipe="native", target_spacing=1.0)
    multi = coverage_ceiling_labels(truth, (0.5, 0.5), coarse)
    hard_multi = ceiling_labels(truth, (0.5, 0.5), coarse)
    assert set(np.unique(multi)) <= {0, 1, 2}
    assert dice(hard_multi == CORTEX, truth == CORTEX) < dice(multi == CORTEX, truth == CORTEX) < 1.0
