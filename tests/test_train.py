"""`unet prepare` and `unet train` on a local Ray instance with 2 CPU workers and tiny phantoms."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jobs import prepare, train
from support.bundles import SMALL_MODEL as SMALL
from unet_core.bundle import load_bundle
from unet_core.io import read_volume, storage
from unet_core.preprocessing import slices_to_model_input


def test_prepare_splits_by_case_and_writes_a_manifest(prepared):
    m = prepare.read_prepared(prepared)
    assert set(m["cases"]["train"]) | set(m["cases"]["val"]) == {f"case_{i:03d}" for i in range(10)}
    assert not set(m["cases"]["train"]) & set(m["cases"]["val"])
    assert len(m["cases"]["val"]) == 2 and m["counts"] == {"train": 128, "val": 32}
    assert m["preprocess"]["window"] == "abdomen" and m["preprocess"]["input_size"] == 64
    files = [e.uri for e in storage.list_files(prepared)]
    assert any("/slices/split=train/" in u and u.endswith(".parquet") for u in files)
    assert rc_refuses_overwrite(prepared)


def rc_refuses_overwrite(out) -> bool:
    return prepare.main(["--images", "x", "--masks", "y", "--output", out]) == 2


@pytest.mark.e2e
def test_train_two_workers_to_s3(prepared, trained_bundle):
    output = trained_bundle
    model, info = load_bundle(output)
    history = info.training["history"]
    assert len(history) == 30
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]  # the loss falls
    assert info.training["best_val_dice"] > 0.6  # an easy phantom is learned
    assert all(h["replica_weight_spread"] == 0.0 for h in history)  # replicas stay identical
    assert info.preprocess.window == "abdomen" and info.model.base_filters == 8
    # Checkpoints and TensorBoard events landed in S3 next to the bundle.
    runs = [e.uri for e in storage.list_files(f"{output}.runs")]
    assert any("/checkpoint_" in u and u.endswith("best_weights.npz") for u in runs)
    bundle_files = [e.uri for e in storage.list_files(output)]
    assert any("/tensorboard/" in u for u in bundle_files) and f"{output}/curves.png" in bundle_files
    # The bundle predicts: the target organ is found in a validation case.
    m = prepare.read_prepared(prepared)
    case = m["cases"]["val"][0]
    image = read_volume(f"s3://training-set/raw/images/{case}.nii.gz")
    truth = read_volume(f"s3://training-set/raw/masks/{case}.nii.gz").voxels == 1
    x = slices_to_model_input(np.moveaxis(image.voxels, 2, 0), info.preprocess)
    pred = model.predict(x, verbose=0)[..., 0] > info.threshold
    pred = np.moveaxis(pred, 0, 2)
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert dice > 0.6


@pytest.mark.e2e
def test_resume_continues_after_the_checkpoint(prepared, tmp_path):
    output = str(tmp_path / "model")
    args = ["--data", prepared, "--output", output, "--workers", "1", *SMALL]
    assert train.main([*args, "--epochs", "2"]) == 0
    # The same run again without --resume is refused, not silently restarted.
    assert train.main([*args, "--epochs", "4"]) == 2
    assert train.main([*args, "--epochs", "4", "--resume"]) == 0
    info = json.loads(open(f"{output}/bundle.json").read())
    epochs = [h["epoch"] for h in info["training"]["history"]]
    assert epochs == [0, 1, 2, 3]
    assert {"event": "resumed", "from_epoch": 2}.items() <= info["training"]["events"][0].items()
