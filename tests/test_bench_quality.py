"""`unet bench quality --quality-quick`: the task, both recipes' plans and ceilings, and both recipes
prepared, trained (the post-processing decision recorded) and segmented end to end through the
CLI's functions, with and without --tta flip."""
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
    for recipe in (seed, native):
        [run] = recipe["runs"]
        assert "error" not in run and run["train_slices_per_s"] > 0
        for name in ("plain", "tta"):
            assert run[f"segment_{name}_slices_per_s"] > 0 and run[f"infer_{name}_slices_per_s"] > 0
        assert 0.0 <= run["dice"] <= 1.0 and 0.0 <= run["dice_tta"] <= 1.0
        assert isinstance(run["largest_component"], bool)  # unet train decided on the validation cases
        assert recipe["dice_mean"] == run["dice"] and recipe["dice_spread"] == 0.0
    assert "quality task:" in out and "ceiling Dice" in out and "not run" not in out
