"""Patches of the native recipe (unet_core/training/patches.py): foreground oversampling at the
stated fraction, the same patches for a seed, padding of slices smaller than the patch."""
from __future__ import annotations

import numpy as np
import pytest

from unet_core.training.patches import FOREGROUND_FRACTION, n_foreground, pad_to_patch, sample_patches


def _slice(rng, h, w, fg_pixels: int, channels: int = 1):
    image = rng.normal(size=(h, w, channels)).astype(np.float32)
    mask = np.zeros((h, w), np.uint8)
    mask.flat[rng.choice(h * w, fg_pixels, replace=False)] = 1
    return image, mask


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 6, 8, 9])
def test_foreground_oversampling_gives_the_stated_fraction(batch):
    # Slices of 96 x 80 with a single foreground pixel, patches of 16: a uniform patch holds that
    # pixel with probability about 4%, a drawn one always.
    rng = np.random.default_rng(0)
    slices = [_slice(rng, 96, 80, 1) for _ in range(batch)]
    n_batches, holding = 200, 0
    for _ in range(n_batches):
        p = sample_patches([s[0] for s in slices], [s[1] for s in slices], 16, rng)
        # Exactly the last ceil(B / 3) positions are drawn on foreground, in every batch.
        assert p.foreground_drawn.tolist() == [i >= batch - n_foreground(batch) for i in range(batch)]
        assert (p.masks[p.foreground_drawn].reshape(p.foreground_drawn.sum(), -1).max(axis=1) == 1).all()
        holding += int((p.masks.reshape(batch, -1).max(axis=1) > 0).sum())
    drawn = n_foreground(batch) / batch
    assert drawn >= FOREGROUND_FRACTION
    assert holding / (n_batches * batch) >= drawn  # uniform patches add, never take away
    assert holding / (n_batches * batch) < drawn + 0.1


def test_a_drawn_patch_centres_its_pixel_when_it_can():
    rng = np.random.default_rng(1)
    image = np.zeros((64, 64, 1), np.float32)
    mask = np.zeros((64, 64), np.uint8)
    mask[40, 21] = 1
    p = sample_patches([image], [mask], 16, rng)
    assert p.origins[0].tolist() == [32, 13] and p.masks[0, 8, 8, 0] == 1
    mask[:] = 0
    mask[2, 63] = 1  # near a corner: moved inside the slice, the pixel still in the patch
    p = sample_patches([image], [mask], 16, rng)
    assert p.origins[0].tolist() == [0, 48] and p.masks[0, 2, 15, 0] == 1


def test_a_drawn_position_without_foreground_falls_back_to_uniform():
    rng = np.random.default_rng(2)
    image, mask = np.zeros((32, 32, 1), np.float32), np.zeros((32, 32), np.uint8)
    p = sample_patches([image] * 3, [mask] * 3, 8, rng)
    assert not p.foreground_drawn.any() and p.images.shape == (3, 8, 8, 1)


def test_the_same_seed_gives_the_same_patches_and_another_seed_others():
    rng = np.random.default_rng(3)
    slices = [_slice(rng, 50 + 7 * i, 61 - 3 * i, 5, channels=3) for i in range(6)]
    images, masks = [s[0] for s in slices], [s[1] for s in slices]
    a = sample_patches(images, masks, 24, np.random.default_rng(7))
    b = sample_patches(images, masks, 24, np.random.default_rng(7))
    c = sample_patches(images, masks, 24, np.random.default_rng(8))
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.origins, b.origins) and not np.array_equal(a.origins, c.origins)
    assert a.images.shape == (6, 24, 24, 3) and a.images.dtype == np.float32 and a.masks.shape == (6, 24, 24, 1)


def test_a_small_slice_is_padded_with_its_minimum_and_background():
    image = np.arange(5 * 3 * 2, dtype=np.float32).reshape(5, 3, 2) - 4.0  # channel minima -4 and -3
    mask = np.ones((5, 3), np.uint8)
    padded, pmask = pad_to_patch(image, mask, 8)
    assert padded.shape == (8, 8, 2) and pmask.shape == (8, 8)
    # Centred: 3 rows padded as 1 before / 2 after, 5 columns as 2 / 3.
    assert np.array_equal(padded[1:6, 2:5], image) and pmask[1:6, 2:5].all()
    assert pmask.sum() == 15
    outside = np.ones((8, 8), bool)
    outside[1:6, 2:5] = False
    assert (padded[outside][:, 0] == -4).all() and (padded[outside][:, 1] == -3).all()
    # Larger along one axis only: padded along the other, cut along the first.
    wide = np.zeros((4, 20, 1), np.float32)
    p = sample_patches([wide], [np.zeros((4, 20), np.uint8)], 8, np.random.default_rng(0))
    assert p.images.shape == (1, 8, 8, 1)
    big = np.ones((9, 9, 1), np.float32)
    same, _ = pad_to_patch(big, np.zeros((9, 9), np.uint8), 8)
    assert same is big
