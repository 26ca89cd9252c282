"""The predictor pool on the local Ray instance: least-busy routing, growth up to the maximum while
every predictor is busy, leases held alone for retries, and a clean shutdown."""
from __future__ import annotations

import numpy as np
import ray

from jobs.predictors import no_predictor_left, predict_with, start_pool
from support.bundles import tiny_bundle


def _bundle(path: str) -> str:
    return tiny_bundle(path, size=16, base_filters=2, depth=1, name="pool")


def test_pool_routes_least_busy_grows_and_lends_alone(tmp_path, ray_local):
    pool = start_pool(_bundle(str(tmp_path / "b")), 4, "float32", False, 1, 2, 0)
    try:
        assert ray.get(pool.ready.remote()) == 1
        i, _ = ray.get(pool.acquire.remote())
        j, _ = ray.get(pool.acquire.remote())  # the only predictor is busy: the pool grows
        assert (i, j) == (0, 1) and ray.get(pool.stats.remote())["predictors_started"] == 2
        k, _ = ray.get(pool.acquire.remote())  # at its maximum: the least busy
        assert k in (0, 1)
        assert ray.get(pool.acquire.remote(True)) is None  # nobody idle: no lease held alone
        for n in (i, j, k):
            ray.get(pool.release.remote(n))
        alone, _ = ray.get(pool.acquire.remote(True))
        other, _ = ray.get(pool.acquire.remote())
        assert other != alone  # a predictor lent alone takes no one else
        ray.get(pool.release.remote(other))
        ray.get(pool.release.remote(alone))

        prob, seconds, attempts = predict_with(pool, 3)(np.zeros((5, 16, 16, 1), np.float16))
        assert prob.shape == (5, 16, 16, 1) and attempts == 1 and seconds > 0
    finally:
        ray.get(pool.shutdown.remote())
        ray.kill(pool)
    assert no_predictor_left(timeout=20.0)
