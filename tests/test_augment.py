from __future__ import annotations

import numpy as np
import tensorflow as tf

from unet_core.augment import augment_batch
from unet_core.config import AugmentConfig


def _pair(n=8, size=64):
    rng = np.random.default_rng(0)
    masks = np.zeros((n, size, size, 1), np.float32)
    for i in range(n):
        r, c = rng.integers(10, 40, 2)
        masks[i, r : r + 15, c : c + 20] = 1
    images = masks * 0.8 + 0.1  # the image shows its mask: alignment is testable
    return images, masks


def test_mask_stays_binary_and_aligned():
    images, masks = _pair()
    a, b = augment_batch(tf.constant(images), tf.constant(masks), AugmentConfig(), tf.constant([3, 4]))
    a, b = a.numpy(), b.numpy()
    assert set(np.unique(b)) <= {0.0, 1.0}
    assert not np.array_equal(b, masks)  # something actually moved
    for i in range(len(a)):
        agree = ((a[i] > 0.5) == (b[i] > 0.5)).mean()
        assert agree > 0.995, (i, agree)


def test_labels_kept_and_seed_reproducible():
    images, masks = _pair()
    labels = (masks * 3).astype(np.int32)
    cfg = AugmentConfig(rotation_degrees=45)
    one = augment_batch(tf.constant(images), tf.constant(labels), cfg, tf.constant([1, 1]))
    two = augment_batch(tf.constant(images), tf.constant(labels), cfg, tf.constant([1, 1]))
    other = augment_batch(tf.constant(images), tf.constant(labels), cfg, tf.constant([1, 2]))
    assert one[1].dtype == tf.int32 and set(np.unique(one[1].numpy())) <= {0, 3}
    np.testing.assert_array_equal(one[0].numpy(), two[0].numpy())
    assert not np.array_equal(one[0].numpy(), other[0].numpy())


def test_disabled_is_identity():
    images, masks = _pair(2)
    a, b = augment_batch(tf.constant(images), tf.constant(masks), AugmentConfig(enabled=False), tf.constant([0, 0]))
    np.testing.assert_array_equal(a.numpy(), images)


def test_flip_only_mirrors():
    images, masks = _pair(16)
    cfg = AugmentConfig(rotation_degrees=0, width_shift=0, height_shift=0, shear_degrees=0, zoom=0)
    a, _ = augment_batch(tf.constant(images), tf.constant(masks), cfg, tf.constant([5, 6]))
    a = a.numpy()
    for i in range(16):
        assert np.allclose(a[i], images[i]) or np.allclose(a[i], images[i][:, ::-1])
    assert any(not np.allclose(a[i], images[i]) for i in range(16))
