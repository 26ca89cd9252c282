"""`unet bench segment`'s recipe comparison (jobs/bench/segment.py) at toy sizes: the seed and the
native recipe through the segment job's code path, side by side, with every step timed."""
from __future__ import annotations

import os

import numpy as np

from jobs.bench.segment import STEPS, RecipeCase, compare_recipes, print_recipes
from unet_core.io.nifti import read_nifti


def test_the_recipes_run_side_by_side_through_the_job_code_path(tmp_path, capsys):
    # 64 px at 0.7 mm is 56 px at 0.8 mm: 3 x 3 tiles of 32 a slice, as 512 at 0.7 mm in 256s.
    case = RecipeCase(rows=64, size=32, filters=4, slices=4, batch=4)
    r = compare_recipes(case, str(tmp_path))
    seed, native = r["seed"], r["native"]
    assert "native + TTA" not in r  # only when asked (RecipeCase.tta)
    assert r["slices"] == 8
    assert (seed["tiles_per_slice"], native["tiles_per_slice"], native["model_grid"]) == (1, 9, [56, 56])
    assert (seed["rows"], native["rows"]) == (8, 72)
    assert seed["batch_fill"] == 1.0 and native["batch_fill"] == 1.0  # 4 slices a volume, batches of 4
    assert seed["ratio_to_seed"] == 1.0 and 0 < native["ratio_to_seed"]
    for v in (seed, native):
        assert set(v["wall_s"]) == set(STEPS) == set(v["cpu_s"])
        assert v["wall_s"]["model"] > 0 and v["wall_s"]["preprocess"] > 0 and v["wall_s"]["write"] > 0
    assert native["wall_s"]["stitch"] > 0 and seed["wall_s"]["stitch"] == 0
    # the masks written are the volumes' own grids
    for name in ("seed-recipe-0.nii.gz", "native-recipe-1.nii.gz"):
        with open(os.path.join(tmp_path, name), "rb") as f:
            mask = read_nifti(f.read(), name)
        assert mask.shape == (64, 64, 4) and np.isin(mask.voxels, (0, 1)).all()
    print_recipes(r)
    out = capsys.readouterr().out
    assert "native" in out and "9 tile(s) a slice on a 56 x 56 grid" in out and "load average" in out
