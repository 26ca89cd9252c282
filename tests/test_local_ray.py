"""Local means local: a job without --address starts a Ray instance of its own even when a `ray
start --head` of the user's runs on the same machine (a workstation that keeps a dashboard, or is
also a cluster node), and with --address auto it attaches to that one and says so."""
from __future__ import annotations

import pytest

from support.bundles import tiny_bundle
from support.jobrun import job_env, run_unet
from support.raycluster import ray_head
from unet_core.synthetic import Phantom, SeriesSpec, dicom_series

pytestmark = pytest.mark.e2e


def test_a_job_beside_a_running_head_starts_its_own_ray(tmp_path):
    for name, data in dicom_series(Phantom.random(1), SeriesSpec(rows=32, columns=32, n_slices=4), seed=1)[0]:
        (tmp_path / "archive").mkdir(exist_ok=True)
        (tmp_path / "archive" / name).write_bytes(data)
    bundle = tiny_bundle(str(tmp_path / "bundle"))
    args = ["segment", "--input", str(tmp_path / "archive"), "--model", bundle, "--batch-size", "8"]
    with ray_head(num_cpus=3, discoverable=True):  # the attached job needs a CPU beside its predictor
        rc, out = run_unet(*args, "--output", str(tmp_path / "local"), env=job_env(), timeout=600)
        assert rc == 0, out[-3000:]
        assert "attached to the Ray cluster" not in out and "segmented 1 volumes" in out
        rc, out = run_unet(*args, "--output", str(tmp_path / "attached"), "--address", "auto", env=job_env(),
                           timeout=600)
        assert rc == 0, out[-3000:]
        assert "attached to the Ray cluster at auto" in out
