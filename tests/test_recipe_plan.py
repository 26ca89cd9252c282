"""The plan's decisions: which recipe, which spacing, which normalisation, from the fingerprint."""
from __future__ import annotations

import numpy as np
import pytest

from unet_core.config import PreprocessConfig
from unet_core.errors import ConfigError
from unet_core.recipe.fingerprint import Fingerprint, IntensityStats
from unet_core.recipe.plan import PlanRequest, describe, parse_target_spacing, plan_preprocess


def _fingerprint(spacings=(0.6, 0.8, 1.0), std=200.0) -> Fingerprint:
    cases = [{"case_id": f"c{n}", "shape": [512, 512, 40], "spacing": [s, s, 2.5], "class_voxels": [9, 1],
              "n_foreground": 1} for n, s in enumerate(spacings)]
    return Fingerprint(cases=cases, intensity=[IntensityStats("0", 300.0, std, -50.0, 1200.0, 1000)],
                       class_fractions=[0.9, 0.1], seed=0)


def test_the_seed_recipe_is_todays_preprocessing():
    pre = plan_preprocess(PlanRequest(recipe="seed", input_size=128, context_slices=1), None)
    assert pre == PreprocessConfig(input_size=128, context_slices=1)  # the defaults are the seed's


def test_native_on_ct_takes_the_median_spacing_and_the_foreground_statistics():
    pre = plan_preprocess(PlanRequest(recipe="native", input_size=256), _fingerprint())
    assert (pre.recipe, pre.normalization, pre.target_spacing, pre.input_size) == ("native", "ct_foreground", 0.8, 256)
    assert (pre.foreground_mean, pre.foreground_std, pre.foreground_p005, pre.foreground_p995) == (300, 200, -50, 1200)


def test_median_pools_both_in_plane_axes_of_the_training_cases():
    fp = _fingerprint()
    fp.cases[0]["spacing"] = [0.5, 0.7, 3.0]
    assert fp.median_in_plane_spacing() == float(np.median([0.5, 0.7, 0.8, 0.8, 1.0, 1.0]))


def test_target_spacing_overrides_and_source_keeps_each_images_own():
    fp = _fingerprint()
    assert plan_preprocess(PlanRequest(target_spacing=parse_target_spacing("0.7")), fp).target_spacing == 0.7
    assert plan_preprocess(PlanRequest(target_spacing=parse_target_spacing("source")), fp).target_spacing is None


def test_other_modalities_are_zscored_and_window_keeps_the_named_window():
    fp = _fingerprint()
    assert plan_preprocess(PlanRequest(modality="uint16"), fp).normalization == "zscore"
    pre = plan_preprocess(PlanRequest(normalization="window", window="bone"), fp)
    assert (pre.normalization, pre.window_bounds(), pre.foreground_mean) == ("window", (-500.0, 1300.0), None)
    # spacing given and no foreground statistics needed: no fingerprint pass is needed
    assert not PlanRequest(normalization="zscore", target_spacing=0.8).needs_fingerprint
    assert PlanRequest().needs_fingerprint and not PlanRequest(recipe="seed").needs_fingerprint


@pytest.mark.parametrize("request_kwargs, match", [
    ({"recipe": "seed", "target_spacing": 0.8}, "belongs to the native recipe"),
    ({"recipe": "seed", "normalization": "zscore"}, "needs --recipe native"),
    ({"target_spacing": "median"}, "a number of mm or 'source'"),
    ({"recipe": "nnunet"}, "recipe must be one of"),
])
def test_contradictory_requests_are_refused(request_kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PlanRequest(**request_kwargs)


def test_bad_spacing_text_and_unusable_statistics_are_refused():
    for text in ("-1", "0", "fine"):
        with pytest.raises(ConfigError, match="--target-spacing"):
            parse_target_spacing(text)
    with pytest.raises(ConfigError, match="intensities are constant"):
        plan_preprocess(PlanRequest(), _fingerprint(std=0.0))
    with pytest.raises(ConfigError, match="ct_foreground is for CT"):
        plan_preprocess(PlanRequest(modality="uint16", normalization="ct_foreground"), _fingerprint())
    with pytest.raises(ConfigError, match="needs the training cases' fingerprint"):
        plan_preprocess(PlanRequest(), None)


def test_the_printed_plan_says_the_decisions():
    fp = _fingerprint()
    text = "\n".join(describe(plan_preprocess(PlanRequest(input_size=256), fp), fp))
    assert "recipe native" in text and "resampled to 0.8 mm" in text and "patches of 256 x 256 (205 mm)" in text
    assert "clipped to -50.0 / 1200.0 HU" in text and "(HU - 300.0) / 200.0" in text
    assert "median slice at that spacing 512 x 512" in text  # 512 px at 0.8 mm stays 512
    seed = "\n".join(describe(plan_preprocess(PlanRequest(recipe="seed"), None), None))
    assert "resized to 256 x 256" in seed and "abdomen (-160 to 240 HU)" in seed
