"""`unet bench quality --quality-quick`: the task, both recipes' plans and ceilings, and the seed
recipe prepared, trained and segmented end to end through the CLI's functions."""
from __future__ import annotations

import json

import pytest

from support.jobrun import run_unet

pytestmark = pytest.mark.e2e


def test_quick_quality_bench_measures_both_recipes(tmp_path):
    rc, out = run_unet("bench", "quality", "--quality-quick", "--num-cpus", "2", "--workdir", str(tmp_path / "w"),
                       "--json", str(tmp_path / "q.json"), timeout=1500)
    assert rc == 0, out[-3000:]
    r = json.loads((tmp_path / "q.json").read_text())["quality"]
    assert r["task"]["heldout_spacing"] < min(r["task"]["train_spacings"])
    seed, native = r["seed"], r["native"]
    assert seed["plan"] == {"target_spacing": None, "normalization": "window", "input_size": 64}
    assert native["plan"]["normalization"] == "ct_foreground"
    # the median of the training cases' spacings (the validation case is not among them)
    assert min(r["task"]["train_spacings"]) <= native["plan"]["target_spacing"] <= 0.8
    # the held-out case (0.6 mm, 107 px) loses more at 64 x 64 than at about 0.8 mm (80 px)
    assert 0.5 < seed["ceiling"]["dice"] < native["ceiling"]["dice"] < 1.0
    run = seed["runs"][0]
    assert run["train_slices_per_s"] > 0 and run["segment_plain_slices_per_s"] > 0
    assert 0.0 <= run["dice"] <= 1.0
    assert "quality task:" in out and "ceiling Dice" in out
