"""The training loop without Ray (unet_core/training/loop.py on SerialHost): a seed repeats bit for
bit, resumption continues exactly, checkpoints hold what they say, early stopping stops, the
native recipe trains on patches, and no TensorBoard folder is left behind."""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest

from unet_core.config import AugmentConfig, ModelConfig, TrainConfig
from unet_core.training.loop import LoopConfig, SerialHost, run_training
from unet_core.training.plan import StepPlan
from unet_core.training.rows import WorkerRows

MODEL = ModelConfig(input_size=16, base_filters=2, depth=2, dropout=0.0)


def _rows(n: int, seed: int, sizes: tuple[int, int] = (16, 16)) -> WorkerRows:
    """n slices of a bright disc on noise (float16 image, uint8 mask), sides drawn from `sizes`."""
    rng = np.random.default_rng(seed)
    keys, images, masks, hs, ws = [], [], [], [], []
    for i in range(n):
        h, w = (int(s) for s in rng.integers(sizes[0], sizes[1] + 1, 2))
        yy, xx = np.mgrid[:h, :w]
        mask = ((yy - rng.uniform(0, h)) ** 2 + (xx - rng.uniform(0, w)) ** 2 < rng.uniform(4, 25)).astype(np.uint8)
        image = (0.2 * rng.random((h, w)) + 0.6 * mask).astype(np.float16)[..., None]
        keys.append((f"case_{i // 4}", i % 4))
        images.append(image.tobytes())
        masks.append(mask.tobytes())
        hs.append(h)
        ws.append(w)
    return WorkerRows(keys, images, masks, np.array(hs, np.int32), np.array(ws, np.int32), 1)


ROWS = {"train": _rows(24, 0), "val": _rows(8, 1)}


def _config(epochs: int = 2, seed: int = 5, recipe: str = "seed", **train) -> LoopConfig:
    train = {"batch_size": 4, "epochs": epochs, "seed": seed, "loss": "bce_dice", **train}
    return LoopConfig(model=MODEL, train=TrainConfig(**train), plan=StepPlan.for_run(24, 8, 1, 4),
                      augment=AugmentConfig(enabled=True), recipe=recipe)


def _weights(folder: str) -> list[np.ndarray]:
    with np.load(os.path.join(folder, "weights.npz")) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def _train(folder, cfg: LoopConfig, rows=ROWS, resume: bool = False) -> SerialHost:
    host = SerialHost(rows, str(folder), resume=resume)
    run_training(host, cfg)
    return host


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory):
    """Two epochs of a seeded run, with tempfile's folder watched for leftovers."""
    tmp = tmp_path_factory.mktemp("tempdir")
    saved, tempfile.tempdir = tempfile.tempdir, str(tmp)
    try:
        host = _train(tmp_path_factory.mktemp("run"), _config())
    finally:
        tempfile.tempdir = saved
    return host, tmp


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_seeded_run_repeats_bit_for_bit(seeded_run, tmp_path):
    # (That another seed gives other weights is tests/test_train_repeat.py's, through the CLI.)
    host, _ = seeded_run
    again = _train(tmp_path / "again", _config())
    assert _same(_weights(host.checkpoints()[-1]), _weights(again.checkpoints()[-1]))
    assert [m["val_dice_hard"] for m in host.metrics] == [m["val_dice_hard"] for m in again.metrics]


def test_checkpoints_hold_state_and_tensorboard_and_nothing_is_left_behind(seeded_run):
    host, tmp = seeded_run
    assert [os.path.basename(c) for c in host.checkpoints()] == ["checkpoint_000000", "checkpoint_000001"]
    last = host.checkpoints()[-1]
    assert {"weights.npz", "best_weights.npz", "optimizer.npz", "state.json", "tensorboard"} <= set(os.listdir(last))
    state = json.load(open(os.path.join(last, "state.json")))
    assert state["epoch"] == 1 and state["world_size"] == 1
    assert [h["epoch"] for h in state["callbacks"]["history"]] == [0, 1]
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(os.path.join(last, "tensorboard")))
    assert [m["epoch"] for m in host.metrics] == [0, 1] and host.metrics[-1]["replica_weight_spread"] == 0.0
    # No tb-* folder (issue #32) nor checkpoint staging folder (autograph's own files may stay).
    assert [n for n in os.listdir(tmp) if not n.startswith("__autograph_generated")] == []


def test_a_resumed_run_continues_exactly(seeded_run, tmp_path):
    host, _ = seeded_run
    _train(tmp_path, _config(epochs=1))
    resumed = _train(tmp_path, _config(epochs=2), resume=True)
    assert [m["epoch"] for m in resumed.metrics] == [1]
    assert type(resumed.events[0]).__name__ == "Resumed" and resumed.events[0].epoch == 1
    state = json.load(open(os.path.join(resumed.checkpoints()[-1], "state.json")))
    assert [e["event"] for e in state["events"]] == ["resumed"]
    # Data order, patches and augmentation depend on the epoch, not on the process: the same weights.
    assert _same(_weights(host.checkpoints()[-1]), _weights(resumed.checkpoints()[-1]))


def test_early_stopping_stops_and_restores_the_best_weights(tmp_path):
    host = _train(tmp_path, _config(epochs=5, learning_rate=1e-12, early_stopping_patience=1))
    assert [m["epoch"] for m in host.metrics] == [0, 1]
    state = json.load(open(os.path.join(host.checkpoints()[-1], "state.json")))
    assert state["callbacks"]["stopped_early"] and state["events"][0]["event"] == "early_stopping"
    best = os.path.join(host.checkpoints()[-1], "best_weights.npz")
    with np.load(best) as data:
        assert _same(_weights(host.checkpoints()[-1]), [data[f"arr_{i}"] for i in range(len(data.files))])


def test_the_native_recipe_trains_on_patches_of_slices_of_any_size(tmp_path):
    rows = {"train": _rows(24, 2, sizes=(9, 30)), "val": _rows(8, 3, sizes=(9, 30))}
    a = _train(tmp_path / "a", _config(epochs=1, recipe="native"), rows)
    # (Patches repeat for a seed: tests/test_patches.py; whole slices of 9 to 30 pixels could not
    # even be stacked into a batch.)
    assert np.isfinite(a.metrics[0]["train_loss"]) and 0.0 <= a.metrics[0]["val_dice_hard"] <= 1.0
