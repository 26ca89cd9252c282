"""A bundle made before the native recipe segments exactly as before.

The golden digests below are the SHA-256 of the model input and of the masks that the code of
commit ca6d373 (the last one before sliding-window inference) gave for these series, bundle
descriptions and model functions; `python tests/test_seed_recipe_unchanged.py` prints them again.
The "model" is a fixed numpy function of its input (float32 arithmetic, cast to float16 as the
predictor does), so the digests depend on the preprocessing and the finishing only, not on
TensorFlow's kernels. The bundle descriptions are bundle.json texts without any key the native
recipe added (recipe, normalization, target_spacing, foreground statistics, tile_overlap,
fingerprint, postprocessing), read by today's `BundleInfo.from_json`.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from support.dicom_factory import write_series
from unet_core.bundle import BundleInfo
from unet_core.inference import PostProcess, finish_volume, prepare_volume, segment_in_runs
from unet_core.io import read_volume
from unet_core.synthetic import SeriesSpec

# bundle.json as `unet train` wrote it before the native recipe (format 1, none of its keys).
OLD_BUNDLE = {
    "format_version": 1, "name": "old", "threshold": 0.5, "keras_modules": [], "segment_codes": {},
    "input_rules": {}, "training": {"epochs": 3},
    "model": {"input_size": 32, "input_channels": 1, "num_classes": 1, "base_filters": 4, "depth": 2,
              "dropout": 0.5, "batch_norm": False, "upsampling": "upsample_conv", "head_conv_filters": 2},
}

# (case name, series, preprocess keys, label names, largest component)
CASES = {
    "axial-down": (SeriesSpec(rows=40, columns=40, n_slices=6), {"input_size": 32}, 2, False),
    "axial-desc-up": (SeriesSpec(rows=24, columns=28, n_slices=5, descending=True), {"input_size": 48}, 2, True),
    "coronal": (SeriesSpec(orientation="coronal", rows=36, columns=30, n_slices=6), {"input_size": 32}, 2, False),
    "sagittal-bone": (SeriesSpec(orientation="sagittal", rows=30, columns=36, n_slices=5),
                      {"input_size": 32, "window": "bone"}, 2, False),
    "oblique-flip": (SeriesSpec(orientation="oblique", rows=32, columns=40, n_slices=6, flip_rows=True,
                                pixel_spacing=(5.5, 6.5)), {"input_size": 16}, 2, False),
    "axial-context-3class": (SeriesSpec(rows=32, columns=32, n_slices=6),
                             {"input_size": 32, "context_slices": 1, "window": None, "window_lower": -200.0,
                              "window_upper": 300.0}, 3, True),
}

GOLDEN = {
    "axial-down": ("0e83132ec45df0d01937c51b", "ae7d699350026026f3be3323"),
    "axial-desc-up": ("5f20ba3335fc16af8e7cc320", "067fcd7477a958331d525135"),
    "coronal": ("a05dfe8d447111591938a0ef", "4befb4c77d80d8b6af22af98"),
    "sagittal-bone": ("d6fc4e8b644d5b094a38b001", "a78e634e965d7dff45cbbd76"),
    "oblique-flip": ("b80320b6b8ca492566ab9683", "06e185a70005ff53ad1c47d6"),
    "axial-context-3class": ("13a0b5e0ccab5cefd53283ce", "c1dc2168ce00bc1494f782f8"),
}


def model_function(x: np.ndarray, classes: int) -> np.ndarray:
    """A fixed function of the model input (n, s, s, C) -> float16 probabilities (n, s, s, K)."""
    x = x.astype(np.float32)
    centre = x[..., x.shape[-1] // 2]
    ramp = np.linspace(-0.2, 0.2, x.shape[2], dtype=np.float32)[None, None, :]  # not flip-symmetric
    if classes == 2:
        z = np.float32(12.0) * (centre + x.mean(axis=-1) - np.float32(0.9)) + ramp
        return (np.float32(1.0) / (np.float32(1.0) + np.exp(-z)))[..., None].astype(np.float16)
    logits = np.stack([np.float32(1.0) - 2 * centre, 3 * centre - np.float32(0.5) + ramp,
                       12 * centre - np.float32(9.0) + x.mean(axis=-1)], -1)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float16)


def old_bundle(preprocess: dict, classes: int) -> BundleInfo:
    d = dict(OLD_BUNDLE, preprocess={"modality": "CT", "window": "abdomen", "window_lower": None,
                                     "window_upper": None, "input_size": 32, "context_slices": 0, **preprocess},
             label_names=["background", "organ", "lung"][:classes])
    d["model"] = dict(d["model"], input_size=preprocess["input_size"])
    return BundleInfo.from_json(json.dumps(d))


def digests(tmp: str, name: str) -> tuple[str, str]:
    spec, preprocess, classes, largest = CASES[name]
    write_series(os.path.join(tmp, name), spec)
    volume = read_volume(os.path.join(tmp, name))
    info = old_bundle(preprocess, classes)
    x = prepare_volume(volume, info.preprocess)
    labels = finish_volume(model_function(x, classes), volume, info.threshold, PostProcess(largest_component=largest))
    assert labels.shape == volume.shape and labels.dtype == np.uint8
    in_runs = segment_in_runs(volume, info.preprocess, lambda rows: model_function(rows, classes), info.threshold,
                              PostProcess(largest_component=largest), max_rows=2)
    np.testing.assert_array_equal(in_runs, labels)  # the chunked path of a stage that holds a run at a time
    return hashlib.sha256(x.tobytes()).hexdigest()[:24], hashlib.sha256(labels.tobytes()).hexdigest()[:24]


def test_an_old_bundle_json_loads_as_the_seed_recipe():
    info = old_bundle({"input_size": 32}, 2)
    p = info.preprocess
    assert (p.recipe, p.normalization, p.target_spacing, p.tile_overlap) == ("seed", "window", None, 0.5)
    assert info.postprocessing == {} and info.fingerprint == {}


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_old_bundle_segments_to_the_same_masks_as_before(tmp_path, name):
    assert digests(str(tmp_path), name) == GOLDEN[name]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            print(f"    {case!r}: {digests(tmp, case)!r},")
