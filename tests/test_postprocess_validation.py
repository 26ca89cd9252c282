"""`unet train`'s validation pass: the validation cases predicted whole through the segment path
(seed recipe: resized slices; native recipe: sliding window), then the largest-component decision
recorded in the bundle's `postprocessing`.

The model is a real function of the model input: a steep sigmoid of the windowed intensity (what a
thresholding network learns), as a numpy function and as a Keras 1 x 1 convolution."""
from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from jobs.prepare import MANIFEST, case_summary_uri
from jobs.train_postprocess import postprocessing_on_validation
from unet_core.bundle import BundleInfo
from unet_core.config import PreprocessConfig
from unet_core.recipe.postprocess import describe
from unet_core.training.cases import Case
from unet_core.training.postprocess_decision import TruthRule, decide_on_validation, keras_predictor

SEED = PreprocessConfig(input_size=16)  # abdomen window (-160, 240 HU) to [0, 1]
NATIVE = PreprocessConfig(input_size=16, recipe="native", target_spacing=1.0)  # 24 px slices: 4 tiles
BRIGHT, DARK = 1000, -100  # HU: above and below the window's middle (40 HU)


def threshold_model(x: np.ndarray) -> np.ndarray:
    """(rows, s, s, C) -> (rows, s, s, 1) float16: sigmoid(40 (x - 0.5)) of the centre channel."""
    return (1.0 / (1.0 + np.exp(-40.0 * (x[..., :1].astype(np.float32) - 0.5)))).astype(np.float16)


def _write(path, array, spacing=1.0):
    affine = np.diag([spacing, spacing, 2.0, 1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(nib.Nifti1Image(array, affine).to_bytes()))
    return str(path)


def _case(root, name: str, speck: bool = False, second: bool = False, labels_of_speck: int = 0) -> Case:
    """A 24 x 24 x 8 CT: a bright block labelled 1 (and a second one with `second`); `speck`
    adds a bright blob the truth labels `labels_of_speck` (0: a false positive of any threshold)."""
    image = np.full((24, 24, 8), DARK, np.int16)
    truth = np.zeros((24, 24, 8), np.uint8)
    image[3:12, 3:12, 1:7], truth[3:12, 3:12, 1:7] = BRIGHT, 1
    if second:
        image[15:19, 3:7, 2:5], truth[15:19, 3:7, 2:5] = BRIGHT, 1
    if speck:
        image[17:21, 17:21, 5:7], truth[17:21, 17:21, 5:7] = BRIGHT, labels_of_speck
    return Case(name, _write(root / "images" / f"{name}.nii.gz", image), _write(root / "masks" / f"{name}.nii.gz", truth))


@pytest.mark.parametrize("pre", [SEED, NATIVE], ids=["seed", "native"])
def test_specks_are_removed_when_no_case_loses(tmp_path, pre):
    cases = [_case(tmp_path, "a", speck=True), _case(tmp_path, "b")]
    d = decide_on_validation(threshold_model, pre, 0.5, 2, cases, TruthRule())
    assert d.cases == 2 and d.largest_component
    assert d.plain[0] < d.with_largest[0] == pytest.approx(1.0, abs=0.02)


def test_refused_when_a_true_second_component_would_be_lost(tmp_path):
    cases = [_case(tmp_path, "a", speck=True), _case(tmp_path, "b", second=True)]
    d = decide_on_validation(threshold_model, NATIVE, 0.5, 2, cases, TruthRule())
    # the speck's case gains, the two-block case loses its second block: the mean falls, refused
    assert d.with_largest[0] < d.plain[0] and not d.largest_component


def test_truth_is_the_mask_as_trained(tmp_path):
    """Binary with foreground labels: a speck labelled 3 is background when only label 1 is trained."""
    cases = [_case(tmp_path, "a", speck=True, labels_of_speck=3)]
    only_one = decide_on_validation(threshold_model, SEED, 0.5, 2, cases, TruthRule(True, (1,)))
    assert only_one.largest_component
    both = decide_on_validation(threshold_model, SEED, 0.5, 2, cases, TruthRule(True, (1, 3)))
    assert not both.largest_component  # the speck is foreground: removing it loses Dice


def test_a_bad_case_is_skipped_and_named(tmp_path):
    skipped: list[str] = []
    cases = [Case("gone", str(tmp_path / "nope.nii.gz"), str(tmp_path / "nope_mask.nii.gz")),
             _case(tmp_path, "a", speck=True), Case("flat", str(tmp_path / "x.png"), str(tmp_path / "y.png"))]
    d = decide_on_validation(threshold_model, SEED, 0.5, 2, cases, TruthRule(), on_skip=skipped.append)
    assert d.cases == 1 and d.largest_component
    assert len(skipped) == 1 and "nope.nii.gz" in skipped[0]  # the 2D case is left out, not an error


def _keras_threshold_model():
    import keras

    inputs = keras.Input((None, None, 1))
    conv = keras.layers.Conv2D(1, 1, activation="sigmoid")
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.full((1, 1, 1, 1), 40.0, np.float32), np.full((1,), -20.0, np.float32)])
    return model


def test_the_decision_is_recorded_from_the_prepared_validation_cases(tmp_path):
    """jobs/train.py's write_bundle calls this with the trained model: the manifest's validation
    cases (not the training ones), their sources from prepare's case summaries."""
    prepared = tmp_path / "prepared"
    (prepared / "cases").mkdir(parents=True)
    val = [_case(tmp_path, "v1", speck=True), _case(tmp_path, "v2")]
    train = [_case(tmp_path, "t1", second=True)]  # would refuse the decision if it were used
    for case, split in [*((c, "val") for c in val), *((c, "train") for c in train)]:
        with open(case_summary_uri(str(prepared), case.case_id), "w") as f:
            json.dump({"case_id": case.case_id, "image": case.image, "mask": case.mask, "split": split}, f)
    (prepared / MANIFEST).write_text(json.dumps({"binary": True, "foreground_labels": None,
                                                 "cases": {"train": ["t1"], "val": ["v1", "v2"]}}))
    info = BundleInfo(preprocess=NATIVE, label_names=["background", "bone"])
    model = _keras_threshold_model()
    recorded = postprocessing_on_validation(model, info, str(prepared))
    assert recorded["largest_component"] is True and recorded["cases"] == 2
    direct = decide_on_validation(keras_predictor(model), NATIVE, 0.5, 2, val, TruthRule())
    assert recorded == direct.to_dict()
    assert direct.to_dict() == decide_on_validation(threshold_model, NATIVE, 0.5, 2, val, TruthRule()).to_dict()
    line = describe(recorded)
    assert line.startswith("post-processing: largest component kept") and "over 2 cases" in line
    # no prepared data beside the checkpoint: no decision, and `auto` keeps the largest component off
    assert postprocessing_on_validation(model, info, str(tmp_path / "elsewhere")) == {}
