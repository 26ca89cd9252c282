"""A job that the Ray instance can never run says so at once (jobs/capacity.py): a `unet segment`
attached to a 1-CPU cluster without an autoscaler used to wait forever for a CPU its predictor
actor held (issue 32)."""
from __future__ import annotations

import secrets
import time

import pytest

from jobs.capacity import CpuNeed, autoscaling, require_cpus
from jobs.exits import Exit
from jobs.predictors import Predictors
from support.bundles import tiny_bundle
from support.jobrun import job_env, run_unet
from unet_core.errors import ConfigError
from unet_core.synthetic import Phantom, SeriesSpec, dicom_series


def test_the_private_ray_api_capacity_reads_is_where_it_was():
    """jobs/capacity.py reads whether an autoscaler runs as `ray status` does; checked against the
    pinned Ray: an upgrade that moves these names fails here."""
    import inspect

    import ray
    import ray._private.ray_constants as ray_constants
    from ray.autoscaler._private import monitor
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get  # noqa: F401

    assert ray.__version__ == "2.60.0", "the pinned Ray changed: check jobs/capacity.py against it, then this pin"
    assert ray_constants.DEBUG_AUTOSCALING_STATUS == "__autoscaling_status"
    assert "fetch_from_server" in inspect.signature(is_autoscaler_v2).parameters
    assert 'status["autoscaler_report"]' in inspect.getsource(monitor)
    assert monitor.BASE_READONLY_CONFIG["provider"]["type"] == "readonly"  # what a `ray start` head runs
    assert format_readonly_node_type("ab12") == "node_ab12"  # its nodes' anonymous types


def test_a_local_instance_without_the_cpus_a_job_needs_is_refused_at_once(ray_local, tmp_path):
    import ray

    have = ray.cluster_resources()["CPU"]
    assert not autoscaling()  # a job's own instance, as a `ray start` cluster
    require_cpus(CpuNeed(have, "all of them"))  # enough: returns
    predictors = Predictors(str(tmp_path / "never-read"), 4, "float32", False, int(have), int(have), 0)
    started = time.monotonic()
    with pytest.raises(ConfigError) as refused:
        predictors.start()
    assert time.monotonic() - started < 10 and predictors.pool is None  # no actor was asked for
    said = str(refused.value)
    assert f"has {have:g} CPUs and no autoscaler" in said and f"needs at least {have + 1:g}" in said
    assert f"1 for each of the {int(have)} predictor actors (--min-predictors, --concurrency)" in said
    assert Predictors("b", 4, "float32", False, 2, 2, 1.0).cpu_need() == CpuNeed(
        1, "1 for the tasks that read and decode volumes; the predictors run on GPUs")


@pytest.mark.e2e
def test_segment_attached_to_a_one_cpu_head_says_why_it_cannot_run_instead_of_waiting(tmp_path):
    from support.raycluster import ray_head

    archive = tmp_path / "archive"
    for s in range(2):
        for name, data in dicom_series(Phantom.random(s), SeriesSpec(rows=32, columns=32, n_slices=8), seed=s)[0]:
            (archive / f"series{s}").mkdir(parents=True, exist_ok=True)
            (archive / f"series{s}" / name).write_bytes(data)
    bundle = tiny_bundle(str(tmp_path / "bundle"), size=32, base_filters=4, depth=2, name="one-cpu")
    token = secrets.token_hex(32)  # token authentication, as tests/support starts clusters
    with ray_head(token=token, num_cpus=1) as head:
        started = time.monotonic()
        rc, log = run_unet("segment", "--input", str(archive), "--model", bundle, "--output", str(tmp_path / "out"),
                           "--address", head.gcs, env=job_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token),
                           timeout=300)
        took = time.monotonic() - started
    assert rc == Exit.USAGE, log[-3000:]
    assert "has 1 CPU and no autoscaler" in log and "needs at least 2" in log, log[-3000:]
    assert "1 for each of the 1 predictor actor (--min-predictors, --concurrency)" in log
    assert took < 240, took  # it used to wait until killed (a loaded machine starts Ray and TensorFlow slowly)
    assert not (tmp_path / "out" / ".unet-lease.json").exists()  # released
