"""`unet prepare` with each recipe on phantom cases at mixed spacings: the seed recipe's rows are
today's, the native recipe's rows are slices at the target spacing normalised from the training
foreground, the fingerprint comes from the training cases only, and dataset.json's labels are
recorded for the bundle."""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs import prepare
from jobs.exits import Exit
from unet_core.config import PreprocessConfig, from_dict
from unet_core.io import read_volume
from unet_core.io.orientation import to_canonical
from unet_core.preprocessing import resize_nearest, slices_to_model_input
from unet_core.recipe.fingerprint import case_fingerprint, pool, samples_per_case
from unet_core.recipe.resample import target_shape
from unet_core.recipe.slices import native_masks, native_model_input
from unet_core.synthetic import Phantom, nifti_case
from unet_core.training.shards import canonical_case, case_slices

SPACINGS = {"ph_a": 5.0, "ph_b": 6.0, "ph_c": 7.0, "ph_d": 5.5}  # in-plane mm; 10 mm between slices
LABELS = {"background": 0, "organ": 1, "lung": 2, "bone": 3}


def _write_dataset(root) -> str:
    """Four phantom cases of the same anatomy extent at different in-plane spacings, as an nnU-Net
    raw dataset (labels 0..3 named in dataset.json)."""
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(root / sub, exist_ok=True)
    for n, (case, s) in enumerate(SPACINGS.items()):
        size = int(round(330 / s))
        affine = np.diag([s, s, 10.0, 1.0])
        affine[:3, 3] = -np.array([s, s, 10.0]) * (np.array([size, size, 6]) - 1) / 2
        affine[2, 3] -= 30.0
        img, lab = nifti_case(Phantom.random(n), affine, (size, size, 6), seed=n)
        (root / "imagesTr" / f"{case}_0000.nii.gz").write_bytes(img)
        (root / "labelsTr" / f"{case}.nii.gz").write_bytes(lab)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS,
                                                   "numTraining": len(SPACINGS), "file_ending": ".nii.gz"}))
    return str(root)


def _rows(out) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(f"{out}/slices/split=*/*.parquet")):
        split = path.split("split=")[1].split("/")[0]
        rows += [{**r, "split": split} for r in pq.ParquetFile(path).read().to_pylist()]
    return sorted(rows, key=lambda r: (r["case_id"], r["slice_index"]))


def _canonical(uri):
    v = read_volume(uri)
    return v, np.moveaxis(to_canonical(v.voxels, v.affine)[0], 2, 0)


def test_seed_rows_are_todays_with_height_and_width(tmp_path):
    root = _write_dataset(tmp_path / "ds")
    image, slices = _canonical(f"{root}/imagesTr/ph_b_0000.nii.gz")
    mask, labels = _canonical(f"{root}/labelsTr/ph_b.nii.gz")
    cfg = PreprocessConfig(input_size=48, context_slices=1)
    rows = list(case_slices(image, mask, "ph_b", "train", cfg, foreground_labels=(1,)))
    # today's code path, written out: resize to the input size, window, neighbours as channels
    x = slices_to_model_input(slices, cfg).astype(np.float16)
    y = resize_nearest((labels == 1).astype(np.uint8), (48, 48))
    assert len(rows) == len(slices)
    for k, row in enumerate(rows):
        assert row["image"] == x[k].tobytes() and row["mask"] == np.ascontiguousarray(y[k]).tobytes()
        assert (row["height"], row["width"], row["size"], row["channels"]) == (48, 48, 48, 3)


def test_native_rows_are_slices_at_the_target_spacing(tmp_path):
    root = _write_dataset(tmp_path / "ds")
    image, slices = _canonical(f"{root}/imagesTr/ph_c_0000.nii.gz")
    mask, labels = _canonical(f"{root}/labelsTr/ph_c.nii.gz")
    cfg = PreprocessConfig(recipe="native", normalization="ct_foreground", target_spacing=5.5, input_size=32,
                           foreground_mean=50.0, foreground_std=300.0, foreground_p005=-900.0, foreground_p995=700.0)
    rows = list(case_slices(image, mask, "ph_c", "val", cfg, binary=False))
    h, w = target_shape(slices.shape[1:], (7.0, 7.0), 5.5)
    assert (h, w) == (round(slices.shape[1] * 7 / 5.5), round(slices.shape[2] * 7 / 5.5)) and h > slices.shape[1]
    x = native_model_input(slices, (7.0, 7.0), cfg)
    assert x.shape == (len(slices), h, w, 1)
    for k, row in enumerate(rows):
        assert (row["height"], row["width"], row["size"]) == (h, w, 32)
        image_k = np.frombuffer(row["image"], np.float16).reshape(h, w, 1)
        np.testing.assert_array_equal(image_k, x[k].astype(np.float16))
        np.testing.assert_array_equal(np.frombuffer(row["mask"], np.uint8).reshape(h, w),
                                      resize_nearest(labels[k].astype(np.uint8), (h, w)))
    # normalised from the statistics: HU 50 -> 0, clipped at the percentiles
    assert x.min() == pytest.approx((-900 - 50) / 300) and x.max() == pytest.approx((700 - 50) / 300)
    np.testing.assert_array_equal(native_masks(labels, (7.0, 7.0), cfg), resize_nearest(labels, (h, w)))


def test_prepare_each_recipe_end_to_end(tmp_path, ray_local):
    root = _write_dataset(tmp_path / "ds")
    native_out = str(tmp_path / "native")
    assert prepare.main(["--dataset", root, "--output", native_out, "--recipe", "native", "--input-size", "32",
                         "--val-fraction", "0.25", "--seed", "1"]) == Exit.OK
    m = prepare.read_prepared(native_out)
    assert m["label_names"] == list(LABELS) and m["binary"] is False
    train, val = m["cases"]["train"], m["cases"]["val"]
    assert len(train) == 3 and len(val) == 1

    # the fingerprint: the training cases only, exactly what the in-process functions give
    fp = prepare.read_fingerprint(native_out)
    assert [c["case_id"] for c in fp["cases"]] == sorted(train)
    mine = []
    for case in train:
        image, mask = read_volume(f"{root}/imagesTr/{case}_0000.nii.gz"), read_volume(f"{root}/labelsTr/{case}.nii.gz")
        vox, lab, spacing = canonical_case(image, mask, case, binary=False)
        mine.append(case_fingerprint(case, vox, lab, tuple(spacing), samples_per_case(3), seed=1))
    assert pool(mine, seed=1).to_dict() == fp

    pre = from_dict(PreprocessConfig, m["preprocess"])
    median = float(np.median([SPACINGS[c] for c in train]))
    assert (pre.recipe, pre.normalization, pre.target_spacing) == ("native", "ct_foreground", median)
    assert (pre.foreground_mean, pre.foreground_p005) == (fp["intensity"][0]["mean"], fp["intensity"][0]["p005"])
    native_rows = _rows(native_out)
    assert max(int(np.frombuffer(r["mask"], np.uint8).max()) for r in native_rows) == 3  # labels kept, not binary
    for row in native_rows:
        s = SPACINGS[row["case_id"]]
        n = int(round(330 / s))
        assert (row["height"], row["width"]) == target_shape((n, n), (s, s), median)
        assert row["split"] == ("val" if row["case_id"] in val else "train")

    # the seed recipe on the same cases: today's rows, and a fingerprint for the bundle all the same
    with open(tmp_path / "cases.csv", "w") as f:
        f.write("case_id,image,mask\n" + "".join(f"{c},{root}/imagesTr/{c}_0000.nii.gz,{root}/labelsTr/{c}.nii.gz\n"
                                                 for c in SPACINGS))
    seed_out = str(tmp_path / "seed")
    assert prepare.main(["--manifest", str(tmp_path / "cases.csv"), "--output", seed_out, "--recipe", "seed",
                         "--input-size", "32", "--val-fraction", "0.25", "--seed", "1",
                         "--foreground-labels", "1"]) == Exit.OK
    m = prepare.read_prepared(seed_out)
    assert m["preprocess"] == prepare.to_dict(PreprocessConfig(input_size=32)) and m["label_names"] is None
    assert prepare.read_fingerprint(seed_out)["class_fractions"][1] > 0
    for row in _rows(seed_out):
        image, slices = _canonical(f"{root}/imagesTr/{row['case_id']}_0000.nii.gz")
        k = row["slice_index"]
        assert row["image"] == slices_to_model_input(slices[k:k + 1], PreprocessConfig(input_size=32))[0].astype(
            np.float16).tobytes()
        assert (row["height"], row["width"]) == (32, 32)


def test_dataset_labels_binary_with_foreground_labels(tmp_path, ray_local):
    """--foreground-labels on a multi-label dataset: binary shards, the chosen structures' names."""
    root = _write_dataset(tmp_path / "ds")
    out = str(tmp_path / "prep")
    assert prepare.main(["--dataset", root, "--output", out, "--recipe", "native", "--target-spacing", "6",
                         "--normalization", "window", "--window", "bone", "--input-size", "32",
                         "--foreground-labels", "2,3"]) == Exit.OK
    m = prepare.read_prepared(out)
    assert m["binary"] is True and m["label_names"] == ["background", "lung+bone"]
    pre = from_dict(PreprocessConfig, m["preprocess"])
    assert (pre.target_spacing, pre.normalization, pre.window) == (6.0, "window", "bone")
    assert all(set(np.frombuffer(r["mask"], np.uint8)) <= {0, 1} for r in _rows(out))


def test_native_context_slices_are_the_neighbours_at_the_target_spacing():
    rng = np.random.default_rng(0)
    slices = rng.normal(0, 100, (4, 30, 20)).astype(np.float32)
    cfg = PreprocessConfig(modality="uint16", recipe="native", normalization="zscore", target_spacing=1.5,
                           context_slices=1)
    x = native_model_input(slices, (1.0, 1.0), cfg)
    alone = native_model_input(slices, (1.0, 1.0), PreprocessConfig(modality="uint16", recipe="native",
                                                                    normalization="zscore", target_spacing=1.5))
    assert x.shape == (4, 20, 13, 3) and alone.shape == (4, 20, 13, 1)
    np.testing.assert_array_equal(x[..., 1], alone[..., 0])
    np.testing.assert_array_equal(x[1:, :, :, 0], alone[:-1, :, :, 0])  # the slice before
    np.testing.assert_array_equal(x[0, :, :, 0], alone[0, :, :, 0])  # edges repeat


def test_a_2d_case_under_the_native_recipe_keeps_its_own_pixels():
    from unet_core.training.shards import image2d_rows

    pixels = np.arange(12 * 9, dtype=np.uint16).reshape(12, 9) * 100
    mask = (pixels > 5000).astype(np.uint8)
    cfg = PreprocessConfig(modality="uint16", recipe="native", normalization="zscore", target_spacing=0.5,
                           input_size=32)
    (row,) = image2d_rows(pixels, 16, mask, "p", "train", cfg)
    assert (row["height"], row["width"], row["size"]) == (12, 9, 32)
    x = np.frombuffer(row["image"], np.float16).reshape(12, 9)
    np.testing.assert_allclose(x, (pixels - pixels.mean()) / pixels.std(), atol=2e-3)
    assert row["mask"] == mask.tobytes()
