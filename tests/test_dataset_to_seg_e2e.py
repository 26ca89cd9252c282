"""End to end through the CLI's functions on a local Ray (e2e):

- a dataset.json with several labels: its names reach the bundle (`label_names`) through prepare
  and train, and the SEG of `unet segment --dicom-seg` names its segments with them (read back
  with pydicom and highdicom, checked by dciodvfy and the SEG IOD's modules);
- the native recipe (the default) prepare -> train -> segment on the phantom archive, against the
  seed recipe with the same network and budget: its Dice on the validation cases is at least the
  seed's, and `unet train` recorded its post-processing decision.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from jobs import prepare, segment, train
from support.seg_check import iod_problems
from unet_core.io import read_volume
from unet_core.segmentation.tables import read_volume_table
from unet_core.synthetic import DEMO_SERIES, Phantom, dicom_series, nifti_case

pytestmark = pytest.mark.e2e

LABELS = {"background": 0, "liver": 1, "lung": 2, "bone": 3}  # the phantom's labels 0..3, named here
TINY = ["--base-filters", "4", "--depth", "2", "--batch-size", "4", "--workers", "1", "--max-failures", "0"]


def _dataset(root) -> str:
    """Six phantom cases (64 x 64 x 16 at 6 mm, the DICOM series' grid) in the nnU-Net raw layout."""
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(root / sub, exist_ok=True)
    affine = np.diag([6.0, 6.0, 10.0, 1.0])
    affine[:3, 3] = -np.array([6.0, 6.0, 10.0]) * (np.array([64, 64, 16]) - 1) / 2
    affine[2, 3] -= 30.0
    for n in range(6):
        img, lab = nifti_case(Phantom.random(n), affine, (64, 64, 16), seed=n)
        (root / "imagesTr" / f"ph{n}_0000.nii.gz").write_bytes(img)
        (root / "labelsTr" / f"ph{n}.nii.gz").write_bytes(lab)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS,
                                                   "numTraining": 6, "file_ending": ".nii.gz"}))
    return str(root)


def test_dataset_json_label_names_become_the_seg_segment_labels(tmp_path, ray_local):
    data = _dataset(tmp_path / "ds")
    prepared, bundle = str(tmp_path / "prepared"), str(tmp_path / "bundle")
    assert prepare.main(["--dataset", data, "--output", prepared, "--input-size", "32", "--val-fraction", "0.34"]) == 0
    assert prepare.read_prepared(prepared)["label_names"] == list(LABELS)
    assert train.main(["--data", prepared, "--output", bundle, "--epochs", "2", *TINY]) == 0
    info = json.loads(open(os.path.join(bundle, "bundle.json")).read())
    assert info["label_names"] == list(LABELS) and info["model"]["num_classes"] == 4
    assert info["postprocessing"]["cases"] == 2 and len(info["postprocessing"]["val_dice"]["plain"]) == 3

    series = tmp_path / "archive" / "series"
    series.mkdir(parents=True)
    files, _, _ = dicom_series(Phantom.random(50), DEMO_SERIES["axial"], seed=50)
    for name, raw in files:
        (series / name).write_bytes(raw)
    out = str(tmp_path / "out")
    assert segment.main(["--input", str(tmp_path / "archive"), "--model", bundle, "--output", out, "--dicom-seg"]) == 0
    [seg_path] = glob.glob(os.path.join(out, "seg", "*.dcm"))
    ds = pydicom.dcmread(seg_path)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["liver", "lung", "bone"]
    assert [int(s.SegmentNumber) for s in ds.SegmentSequence] == [1, 2, 3]
    assert iod_problems(ds) == []

    import highdicom

    seg = highdicom.seg.segread(seg_path)
    assert [seg.get_segment_description(k).segment_label for k in (1, 2, 3)] == ["liver", "lung", "bone"]
    if shutil.which("dciodvfy"):
        done = subprocess.run(["dciodvfy", seg_path], capture_output=True, text=True, timeout=120)
        errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], errors
    elif os.environ.get("CI"):
        pytest.fail("dciodvfy is not installed (apt-get install dicom3tools)")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


def test_native_recipe_end_to_end_is_at_least_the_seed_recipe(training_set, ray_local, tmp_path):
    """The phantom archive (64 x 64 slices at 6 mm) at a 32-pixel model size: the seed recipe sees
    each slice at 12 mm, the native recipe tiles 32 x 32 patches of it at 6 mm."""
    budget = ["--epochs", "12", "--seed", "0", "--loss", "bce_dice", "--early-stopping-patience", "1000", *TINY]
    dices: dict[str, float] = {}
    for recipe in ("seed", "native"):
        prepared, bundle = str(tmp_path / f"{recipe}-prepared"), str(tmp_path / f"{recipe}-bundle")
        assert prepare.main(["--images", f"{training_set}/images", "--masks", f"{training_set}/masks", "--output",
                             prepared, "--recipe", recipe, "--input-size", "32", "--val-fraction", "0.2", "--seed", "3",
                             "--foreground-labels", "1"]) == 0
        manifest = prepare.read_prepared(prepared)
        assert manifest["preprocess"]["recipe"] == recipe
        assert train.main(["--data", prepared, "--output", bundle, *budget]) == 0
        info = json.loads(open(os.path.join(bundle, "bundle.json")).read())
        assert info["postprocessing"]["cases"] == len(manifest["cases"]["val"]) == 2
        folder, out = tmp_path / f"{recipe}-in", str(tmp_path / f"{recipe}-out")
        folder.mkdir()
        for case in manifest["cases"]["val"]:  # one run over both cases: the source of each mask is its row's
            (folder / f"{case}.nii.gz").write_bytes(open_s3(f"{training_set}/images/{case}.nii.gz"))
        assert segment.main(["--input", str(folder), "--model", bundle, "--output", out]) == 0
        rows = read_volume_table(out)
        assert sorted(os.path.basename(r["source"]) for r in rows) == sorted(f"{c}.nii.gz" for c in manifest["cases"]["val"])
        scores = []
        for r in rows:
            case = os.path.basename(r["source"]).removesuffix(".nii.gz")
            truth = read_volume(f"{training_set}/masks/{case}.nii.gz").voxels == 1
            scores.append(_dice(read_volume(r["mask_uri"]).voxels > 0, truth))
        dices[recipe] = float(np.mean(scores))
    print(f"validation Dice, the same budget: {dices}")  # shown with -s or -rP
    assert dices["native"] > 0.7, dices  # it learned the organ
    assert dices["native"] >= dices["seed"], dices


def open_s3(uri: str) -> bytes:
    from unet_core.io import storage

    return storage.read_bytes(uri)
