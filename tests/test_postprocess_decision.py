"""The largest-component decision on validation cases (nnU-Net's rule) and the segment run's choice."""
from __future__ import annotations

import json

import numpy as np
import pytest

from unet_core.bundle import BundleInfo
from unet_core.config import PreprocessConfig
from unet_core.errors import ConfigError
from unet_core.inference import PostProcess
from unet_core.recipe.postprocess import decide_postprocessing, dice_per_label, resolve_postprocess


def _case(organ: bool = True, speck: bool = False, two_lungs: bool = False, lung_speck: bool = False):
    """(prediction, truth) of a 24^3 case: label 1 an organ cube, label 2 one or two lung cubes."""
    truth = np.zeros((24, 24, 24), np.uint8)
    if organ:
        truth[2:10, 2:10, 2:10] = 1
    truth[14:22, 14:22, 2:10] = 2
    if two_lungs:
        truth[14:20, 14:20, 16:20] = 2  # a second true component of label 2, smaller
    pred = truth.copy()
    if speck:
        pred[20:22, 2:4, 20:22] = 1  # a false positive far from the organ
    if lung_speck:
        pred[2:4, 20:22, 20:22] = 2
    return pred, truth


def test_dice_per_label():
    pred, truth = _case(speck=True)
    d = dice_per_label(pred, truth, 3)
    assert d[0] == pytest.approx(2 * 512 / (512 + 520)) and d[1] == 1.0
    assert np.isnan(dice_per_label(np.zeros_like(pred), np.zeros_like(truth), 3)).all()  # both empty: unknown


def test_adopted_when_it_raises_dice_and_no_label_gets_worse():
    d = decide_postprocessing([_case(speck=True), _case(), _case(lung_speck=True)], 3)
    assert d.largest_component and d.cases == 3
    assert d.with_largest[0] > d.plain[0] and d.with_largest[1] > d.plain[1]
    assert d.with_largest == [1.0, 1.0]


def test_refused_when_one_label_gets_worse_even_if_the_mean_rises():
    """Label 2 has two true components in one case: keeping its largest loses the other."""
    cases = [_case(speck=True), _case(speck=True), _case(two_lungs=True)]
    d = decide_postprocessing(cases, 3)
    assert d.with_largest[0] > d.plain[0]  # the organ gains
    assert d.with_largest[1] < d.plain[1]  # the lungs lose
    assert not d.largest_component


def test_refused_when_nothing_changes():
    d = decide_postprocessing([_case(), _case()], 3)
    assert d.plain == d.with_largest and not d.largest_component


def test_a_label_never_seen_is_ignored_and_no_cases_decide_nothing():
    d = decide_postprocessing([_case(organ=False, lung_speck=True)], 3)
    assert d.plain[0] is None and d.with_largest[0] is None and d.largest_component
    none = decide_postprocessing(iter([]), 2)
    assert none.cases == 0 and not none.largest_component
    with pytest.raises(ConfigError, match="3D arrays of one shape"):
        decide_postprocessing([(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))], 2)


def test_the_decision_travels_in_the_bundle_and_auto_follows_it():
    d = decide_postprocessing([_case(speck=True)], 3)
    info = BundleInfo(preprocess=PreprocessConfig(), label_names=["background", "organ", "lung"],
                      postprocessing=d.to_dict())
    back = BundleInfo.from_json(info.to_json())
    assert back.postprocessing["largest_component"] is True
    assert json.loads(info.to_json())["postprocessing"]["val_dice"]["largest_component"] == [1.0, 1.0]
    assert resolve_postprocess(back, "auto") == PostProcess(largest_component=True)
    assert resolve_postprocess(back, "off", fill_holes=True) == PostProcess(largest_component=False, fill_holes=True)
    old = BundleInfo(preprocess=PreprocessConfig())  # made before the decision existed, or packaged
    assert resolve_postprocess(old, "auto") == PostProcess()
    assert resolve_postprocess(old, "on") == PostProcess(largest_component=True)
    with pytest.raises(ConfigError, match="--largest-component must be one of"):
        resolve_postprocess(old, "yes")
