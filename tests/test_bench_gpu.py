"""`unet bench gpu` on this CPU machine: without a GPU it says so and exits 0; with --gpu-dry-run
every section runs through the GPU code paths (dtype policies, Ray Train workers and predictor
actors that each hold one of the GPUs declared to a local Ray)."""
from __future__ import annotations

import json

import pytest

from support.jobrun import run_unet

pytestmark = pytest.mark.e2e


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0():
    rc, out = run_unet("bench", "gpu", timeout=300)
    assert rc == 0
    assert "no NVIDIA GPU is visible" in out


def test_dry_run_goes_through_every_gpu_section(tmp_path):
    rc, out = run_unet("bench", "gpu", "--gpu-dry-run", "--workdir", str(tmp_path / "w"), "--json",
                       str(tmp_path / "gpu.json"), timeout=900)
    assert rc == 0, out[-3000:]
    r = json.loads((tmp_path / "gpu.json").read_text())["gpu"]
    assert r["dry_run"] and r["ray_gpus"] == 2
    for key in ("train_float32", "train_mixed_xla", "infer_float32", "infer_mixed"):
        assert r[key] > 0
    assert sorted(r["multi_gpu"]["images_per_s"]) == ["1", "2"]  # a Ray Train run with 1 and with 2 GPU workers
    assert r["end_to_end"]["volumes"] == 2 and r["end_to_end"]["slices_per_s"] > 0
    assert "DRY RUN on CPU" in out and "141 img/s" in out and "0.7%" in out
    rec = r["recipes"]  # the recipe comparison, at toy sizes with 9 tiles a slice like the real case
    assert rec["native"]["tiles_per_slice"] == 9 and rec["seed"]["rows_per_slice"] == 1
    assert rec["case"]["precision"] == "mixed_float16" and rec["native"]["ratio_to_seed"] > 0
    assert "source slices/s" in out
