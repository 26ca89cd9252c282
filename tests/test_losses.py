"""Losses and metrics against plain numpy references, on random inputs and edge cases."""
from __future__ import annotations

import numpy as np
import pytest

from unet_core.model import losses as L

RNG = np.random.default_rng(0)


def np_dice(t, p, smooth=1.0):
    t, p = t.ravel().astype(np.float64), p.ravel().astype(np.float64)
    return (2 * (t * p).sum() + smooth) / (t.sum() + p.sum() + smooth)


def np_iou(t, p, smooth=1.0):
    t, p = t.ravel().astype(np.float64), p.ravel().astype(np.float64)
    i = (t * p).sum()
    return (i + smooth) / (t.sum() + p.sum() - i + smooth)


def np_mean_iou(t, p):
    t = t.ravel() > 0.5
    scores = []
    for th in np.arange(0.5, 1.0, 0.05):
        b = p.ravel() > th
        per = []
        for tc, pc in ((t, b), (~t, ~b)):
            union = (tc | pc).sum()
            per.append((tc & pc).sum() / union if union else 1.0)
        scores.append(np.mean(per))
    return np.mean(scores)


def np_bce(t, p):
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return (-(t * np.log(p) + (1 - t) * np.log(1 - p))).mean(axis=(1, 2, 3))


CASES = {
    "random": (RNG.random((3, 16, 16, 1)) > 0.7, RNG.random((3, 16, 16, 1))),
    "empty_truth": (np.zeros((2, 8, 8, 1)), RNG.random((2, 8, 8, 1))),
    "empty_both": (np.zeros((2, 8, 8, 1)), np.zeros((2, 8, 8, 1))),
    "empty_prediction": (RNG.random((2, 8, 8, 1)) > 0.5, np.zeros((2, 8, 8, 1))),
    "all_foreground": (np.ones((2, 8, 8, 1)), np.ones((2, 8, 8, 1))),
}


@pytest.mark.parametrize("name", CASES)
def test_binary_metrics_match_numpy(name):
    t, p = (a.astype(np.float32) for a in CASES[name])
    assert float(L.dice_coef(t, p)) == pytest.approx(np_dice(t, p), rel=1e-5)
    assert float(L.iou(t, p)) == pytest.approx(np_iou(t, p), rel=1e-5)
    assert float(L.mean_iou(t, p)) == pytest.approx(np_mean_iou(t, p), rel=1e-5)
    assert float(L.binary_accuracy(t, p)) == pytest.approx(((p > 0.5) == t).mean(), rel=1e-6)
    np.testing.assert_allclose(np.asarray(L.bce_loss(t, p)), np_bce(t, p), rtol=1e-4, atol=1e-6)
    per_dice = [1 - np_dice(t[i], p[i]) for i in range(len(t))]
    np.testing.assert_allclose(np.asarray(L.soft_dice_loss(t, p)), per_dice, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(L.bce_dice_loss(t, p)), np_bce(t, p) + np.asarray(per_dice), rtol=1e-4, atol=1e-6
    )


def test_edge_values():
    z = np.zeros((1, 8, 8, 1), np.float32)
    o = np.ones((1, 8, 8, 1), np.float32)
    assert float(L.dice_coef(z, z)) == 1.0  # nothing to find, nothing found
    assert float(L.dice_coef(o, z)) == pytest.approx(1 / 65)
    assert float(L.dice_coef(o, o)) == 1.0
    assert float(L.mean_iou(o, o)) == 1.0
    assert float(L.soft_dice_loss(o, o)[0]) == pytest.approx(0.0, abs=1e-7)


def np_multiclass_dice(labels, prob, include_background=False, smooth=1.0):
    k = prob.shape[-1]
    onehot = np.eye(k)[labels[..., 0]]
    scores = [
        (2 * (onehot[..., c] * prob[..., c]).sum() + smooth) / (onehot[..., c].sum() + prob[..., c].sum() + smooth)
        for c in range(k)
    ]
    return np.mean(scores if include_background else scores[1:])


@pytest.mark.parametrize("k", [2, 4])
def test_multiclass_forms(k):
    labels = RNG.integers(0, k, (2, 12, 12, 1))
    logits = RNG.normal(size=(2, 12, 12, k))
    prob = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    assert float(L.multiclass_dice(labels, prob)) == pytest.approx(np_multiclass_dice(labels, prob), rel=1e-5)
    assert float(L.multiclass_accuracy(labels, prob)) == pytest.approx(
        (prob.argmax(-1) == labels[..., 0]).mean()
    )
    onehot = np.eye(k)[labels[..., 0]]
    cce = -(onehot * np.log(np.clip(prob, 1e-7, 1))).sum(-1).mean(axis=(1, 2))
    np.testing.assert_allclose(np.asarray(L.cce_loss(labels, prob)), cce, rtol=1e-5)
    per = [1 - np_multiclass_dice(labels[i : i + 1], prob[i : i + 1]) for i in range(2)]
    np.testing.assert_allclose(np.asarray(L.multiclass_soft_dice_loss(labels, prob)), per, rtol=1e-5)
    # A perfect one-hot prediction scores 1.
    perfect = np.eye(k, dtype=np.float32)[labels[..., 0]]
    assert float(L.multiclass_dice(labels, perfect)) == pytest.approx(1.0)


def test_get_loss_names():
    assert L.get_loss("bce_dice", 1) is L.bce_dice_loss
    assert L.get_loss("dice", 3) is L.multiclass_soft_dice_loss
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        L.get_loss("focal", 1)
