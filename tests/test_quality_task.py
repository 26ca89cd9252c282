"""The quality benchmark's task and its ceilings: the same anatomy at every spacing, seeded, and a
ceiling that is the truth at the source resolution and below it at a coarser one."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from unet_core.config import PreprocessConfig
from unet_core.errors import ConfigError
from unet_core.evaluation import dice
from unet_core.recipe.ceiling import ceiling_labels, model_grid
from unet_core.recipe.dataset import read_dataset
from unet_core.synthetic_quality import CORTEX, VESSEL, QualityPhantom, QualityTask, render, write_quality_task


def test_every_spacing_renders_the_same_anatomy():
    phantom = QualityPhantom.random(3, fov=120.0)
    areas = {}
    for s in (0.5, 0.75, 1.0):
        hu, labels, affine = render(phantom, s, n_slices=2, seed=1)
        assert hu.shape == labels.shape == (int(round(120 / s)),) * 2 + (2,)
        assert np.allclose(np.diag(affine)[:3], [s, s, 3.0])
        areas[s] = [(labels == c).sum() * s * s for c in (CORTEX, VESSEL)]
    for c in range(2):  # mm^2 of each structure agree across spacings (the shapes are analytic)
        assert max(a[c] for a in areas.values()) / min(a[c] for a in areas.values()) < 1.1
    again = render(phantom, 0.75, n_slices=2, seed=1)
    np.testing.assert_array_equal(again[0], render(phantom, 0.75, n_slices=2, seed=1)[0])


def test_the_cortex_is_thin_and_brighter_than_everything_else():
    phantom = QualityPhantom.random(0, fov=120.0)
    assert all(0.8 <= b.cortex <= 2.0 for b in phantom.bones) and all(0.8 <= v.radius <= 2.5 for v in phantom.vessels)
    hu, labels, _ = render(phantom, 0.25, n_slices=1, seed=0)
    assert np.median(hu[labels == CORTEX]) > 900 and np.median(hu[labels == VESSEL]) > 250


def test_the_task_is_an_nnunet_dataset_with_a_finer_heldout_case(tmp_path):
    task = QualityTask(train_spacings=(0.8, 1.0, 0.9), heldout_spacing=0.6, fov=48.0, n_slices=2)
    paths = write_quality_task(str(tmp_path), task)
    info = read_dataset(str(tmp_path))
    assert info.label_names == ["background", "cortical_bone", "vessel"] and len(info.cases.cases) == 3
    assert nib.load(paths["heldout_label"]).header.get_zooms()[:2] == (0.6, 0.6)
    assert json.loads((tmp_path / "dataset.json").read_text())["numTraining"] == 3
    with pytest.raises(ConfigError, match="finer than the training median"):
        QualityTask(train_spacings=(0.6, 0.7), heldout_spacing=0.8)


def test_the_ceiling_is_the_truth_at_the_source_resolution_and_less_below_it():
    _, labels, _ = render(QualityPhantom.random(5, fov=64.0), 0.5, n_slices=2, seed=0)
    truth = np.moveaxis(labels, 2, 0)  # (n, H, W) = (2, 128, 128)
    binary = (truth > 0).astype(np.uint8)
    same_seed = PreprocessConfig(input_size=128)
    same_native = PreprocessConfig(recipe="native", target_spacing=0.5)
    for pre in (same_seed, same_native):
        np.testing.assert_array_equal(ceiling_labels(binary, (0.5, 0.5), pre), binary)
        np.testing.assert_array_equal(ceiling_labels(truth, (0.5, 0.5), pre), truth)
    coarse = PreprocessConfig(recipe="native", target_spacing=1.0)
    assert model_grid((128, 128), (0.5, 0.5), coarse) == (64, 64)
    assert model_grid((128, 128), (0.5, 0.5), PreprocessConfig(input_size=32)) == (32, 32)
    d_fine = dice(ceiling_labels(binary, (0.5, 0.5), PreprocessConfig(recipe="native", target_spacing=0.7)), binary)
    d_coarse = dice(ceiling_labels(binary, (0.5, 0.5), coarse), binary)
    assert 0.3 < d_coarse < d_fine < 1.0
    multi = ceiling_labels(truth, (0.5, 0.5), coarse)
    assert set(np.unique(multi)) <= {0, 1, 2} and dice(multi == CORTEX, truth == CORTEX) < 1.0
