"""The dataset fingerprint: statistics exact on known arrays, the sample seeded and capped, the
result independent of the order cases arrive in."""
from __future__ import annotations

import numpy as np
import pytest

from unet_core.errors import ConfigError
from unet_core.recipe.fingerprint import (
    Fingerprint,
    case_fingerprint,
    intensity_stats,
    pool,
    samples_per_case,
)


def test_intensity_stats_are_exact_on_a_known_array():
    s = intensity_stats(np.arange(1000, dtype=np.float32))
    assert s.mean == 499.5
    assert s.std == pytest.approx(np.sqrt((1000**2 - 1) / 12), rel=1e-12)  # population std of 0..n-1
    # numpy's linear interpolation: the q-th percentile of 0..999 is q / 100 * 999
    assert s.p005 == pytest.approx(4.995, abs=1e-9)
    assert s.p995 == pytest.approx(994.005, abs=1e-9)
    assert s.n_samples == 1000


def test_case_fingerprint_counts_classes_and_takes_every_foreground_value_under_the_cap():
    voxels = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    labels = np.zeros((2, 3, 4), np.uint8)
    labels[0, 0, :2] = 1
    labels[1, 2, 3] = 2
    fp = case_fingerprint("a", voxels, labels, (0.7, 0.8, 2.5), per_case=100, seed=0)
    assert fp.shape == (2, 3, 4) and fp.spacing == (0.7, 0.8, 2.5)
    assert fp.class_voxels == (21, 2, 1)
    assert fp.n_foreground == 3
    np.testing.assert_array_equal(fp.sample, [0.0, 1.0, 23.0])  # the foreground voxels, in array order


def test_the_sample_is_capped_seeded_and_drawn_from_the_foreground():
    rng = np.random.default_rng(1)
    voxels = rng.normal(100, 30, (40, 40, 10)).astype(np.float32)
    labels = (rng.random((40, 40, 10)) < 0.5).astype(np.uint8)
    a = case_fingerprint("case_1", voxels, labels, (1, 1, 1), per_case=500, seed=7)
    b = case_fingerprint("case_1", voxels, labels, (1, 1, 1), per_case=500, seed=7)
    c = case_fingerprint("case_1", voxels, labels, (1, 1, 1), per_case=500, seed=8)
    assert a.sample.size == 500 and a.n_foreground > 500
    np.testing.assert_array_equal(a.sample, b.sample)
    assert not np.array_equal(a.sample, c.sample)
    assert np.isin(a.sample, voxels[labels > 0]).all()


def test_pool_gives_numpys_statistics_of_all_samples_whatever_the_case_order():
    rng = np.random.default_rng(2)
    cases = []
    for n in range(3):
        voxels = rng.integers(-1000, 1500, (16, 16, 4)).astype(np.float32)
        labels = (rng.random((16, 16, 4)) < 0.3 + 0.2 * n).astype(np.uint8)
        cases.append(case_fingerprint(f"c{n}", voxels, labels, (0.6 + 0.1 * n, 0.6 + 0.1 * n, 3), 10_000, 0))
    fp = pool(cases, seed=0)
    assert pool(cases[::-1], seed=0) == fp
    everything = np.concatenate([c.sample for c in cases]).astype(np.float64)
    s = fp.intensity[0]
    assert (s.mean, s.std, s.n_samples) == (everything.mean(), everything.std(), everything.size)
    assert (s.p005, s.p995) == tuple(np.percentile(everything, [0.5, 99.5]))
    fg = sum(c.n_foreground for c in cases)
    n = 3 * 16 * 16 * 4
    assert fp.class_fractions == [(n - fg) / n, fg / n]
    assert fp.median_in_plane_spacing() == pytest.approx(0.7)
    assert [c["case_id"] for c in fp.cases] == ["c0", "c1", "c2"]
    assert Fingerprint.from_dict(fp.to_dict()) == fp


def test_the_total_sample_stays_under_the_cap():
    assert samples_per_case(10) == 1_000_000
    assert samples_per_case(3, max_samples=10) == 3
    with pytest.raises(ConfigError, match="at least one training case"):
        samples_per_case(0)


def test_no_foreground_at_all_leaves_no_statistics_and_the_plan_that_needs_them_says_so():
    from unet_core.recipe.plan import PlanRequest, plan_preprocess

    cases = [case_fingerprint("empty", np.zeros((4, 4, 2)), np.zeros((4, 4, 2), np.uint8), (1, 1, 1), 10, 0)]
    fp = pool(cases, seed=0)
    assert fp.intensity == [] and fp.class_fractions == [1.0, 0.0]
    assert plan_preprocess(PlanRequest(normalization="zscore", modality="uint16"), fp).target_spacing == 1.0
    with pytest.raises(ConfigError, match="no foreground voxels in the training cases' masks"):
        plan_preprocess(PlanRequest(), fp)
    with pytest.raises(ConfigError, match="no foreground voxels in the training cases"):
        intensity_stats(np.zeros(0))
