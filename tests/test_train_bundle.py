"""`unet train`'s bundle from a checkpoint (jobs/train.py write_bundle): the native recipe's
preprocessing reaches the bundle unchanged, and the prepared data's fingerprint with it."""
from __future__ import annotations

import json
import os

import pytest

from jobs.train import read_fingerprint, write_bundle
from unet_core.bundle import load_bundle
from unet_core.config import ModelConfig, PreprocessConfig, TrainConfig, to_dict
from unet_core.errors import ConfigError
from unet_core.training.callbacks import CallbackState
from unet_core.training.state import make_optimizer, save_state

NATIVE = PreprocessConfig(input_size=16, recipe="native", normalization="ct_foreground", target_spacing=0.8,
                          foreground_mean=40.0, foreground_std=12.5, foreground_p005=-20.0, foreground_p995=90.0)
FINGERPRINT = {"cases": [{"case_id": "case_000", "spacing": [0.8, 0.8, 2.0], "shape": [40, 40, 8]}],
               "foreground": {"mean": 40.0, "std": 12.5}}


def _checkpoint(folder, cfg: ModelConfig):
    import keras
    from ray.train import Checkpoint

    from unet_core.model import build_unet

    keras.utils.set_random_seed(0)
    model = build_unet(cfg)
    optimizer = make_optimizer(TrainConfig())
    optimizer.build(model.trainable_variables)
    callbacks = CallbackState(learning_rate=1e-3, best_value=0.5, best_epoch=0)
    callbacks.history.append({"epoch": 0, "learning_rate": 1e-3, "val_dice_hard": 0.5, "slices_per_second": 10.0})
    save_state(str(folder), model, optimizer, model.get_weights(), callbacks, 0, {"events": []})
    return Checkpoint.from_directory(str(folder))


@pytest.mark.parametrize("with_fingerprint", [True, False])
def test_the_bundle_keeps_the_native_preprocessing_and_the_fingerprint(tmp_path, with_fingerprint):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    if with_fingerprint:
        (prepared / "fingerprint.json").write_text(json.dumps(FINGERPRINT))
    cfg = ModelConfig(input_size=16, base_filters=2, depth=2)
    output = str(tmp_path / "model")
    write_bundle(_checkpoint(tmp_path / "ckpt", cfg), output, cfg, to_dict(NATIVE), 0.5, ["background", "bone"],
                 read_fingerprint(str(prepared)), {"data": str(prepared)})
    _, info = load_bundle(output)
    assert info.preprocess == NATIVE
    assert info.fingerprint == (FINGERPRINT if with_fingerprint else {})
    assert os.path.exists(os.path.join(output, "curves.png"))


def test_a_fingerprint_that_is_not_an_object_is_refused(tmp_path):
    (tmp_path / "fingerprint.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="fingerprint.json: a fingerprint is a JSON object"):
        read_fingerprint(str(tmp_path))
