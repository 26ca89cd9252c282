"""The seed's augmentation as TensorFlow ops inside the input pipeline.

Keras 3 dropped `ImageDataGenerator`; this draws the same random transforms (rotation, width /
height shift, shear, independent x/y zoom, horizontal flip, 'nearest' fill) per example, composes
them into one projective matrix, and resamples image (bilinear) and mask (nearest) with the
*same* matrix, so masks stay binary (or keep their labels) and stay aligned with their images.

Randomness is stateless: the same `seed` (shape (2,) int) gives the same transforms.
"""
from __future__ import annotations

import math

import tensorflow as tf

from unet_core.config import AugmentConfig


def _random_matrices(batch: int, height: int, width: int, cfg: AugmentConfig, seed) -> tf.Tensor:
    """(batch, 8) transforms mapping output pixel (x, y) to input pixel, as
    `ImageProjectiveTransformV3` expects."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=7)

    def uniform(i, limit):
        return tf.random.stateless_uniform([batch], seeds[i], -limit, limit, dtype=tf.float32)

    theta = uniform(0, math.radians(cfg.rotation_degrees))
    tx = uniform(1, cfg.width_shift * width)
    ty = uniform(2, cfg.height_shift * height)
    shear = uniform(3, math.radians(cfg.shear_degrees))
    zx = 1.0 + uniform(4, cfg.zoom)
    zy = 1.0 + uniform(5, cfg.zoom)
    if cfg.horizontal_flip:
        flip = tf.random.stateless_uniform([batch], seeds[6]) < 0.5
        fx = tf.where(flip, -1.0, 1.0)
    else:
        fx = tf.ones([batch])

    zeros, ones = tf.zeros([batch]), tf.ones([batch])

    def mat(rows):
        return tf.stack([tf.stack(r, axis=-1) for r in rows], axis=-2)  # (batch, 3, 3)

    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    to_centre = mat([[ones, zeros, -cx * ones], [zeros, ones, -cy * ones], [zeros, zeros, ones]])
    from_centre = mat([[ones, zeros, cx * ones], [zeros, ones, cy * ones], [zeros, zeros, ones]])
    rotate = mat(
        [[tf.cos(theta), -tf.sin(theta), zeros], [tf.sin(theta), tf.cos(theta), zeros], [zeros, zeros, ones]]
    )
    shift = mat([[ones, zeros, tx], [zeros, ones, ty], [zeros, zeros, ones]])
    shear_m = mat([[ones, -tf.sin(shear), zeros], [zeros, tf.cos(shear), zeros], [zeros, zeros, ones]])
    zoom = mat([[zx * fx, zeros, zeros], [zeros, zy, zeros], [zeros, zeros, ones]])
    m = from_centre @ shift @ rotate @ shear_m @ zoom @ to_centre
    flat = tf.reshape(m, [batch, 9])
    return flat[:, :8] / flat[:, 8:9]


def augment_batch(images: tf.Tensor, masks: tf.Tensor, cfg: AugmentConfig, seed) -> tuple[tf.Tensor, tf.Tensor]:
    """Randomly transform a batch. images (B, H, W, C) float; masks (B, H, W, 1) any numeric
    dtype (kept). Returns tensors of the same shapes and dtypes."""
    if not cfg.enabled:
        return images, masks
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    transforms = _random_matrices(
        batch, tf.cast(height, tf.float32), tf.cast(width, tf.float32), cfg, seed
    )
    out_shape = tf.stack([height, width])
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32), transforms=transforms, output_shape=out_shape,
        interpolation="BILINEAR", fill_mode="NEAREST", fill_value=0.0,
    )
    warped_masks = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(masks, tf.float32), transforms=transforms, output_shape=out_shape,
        interpolation="NEAREST", fill_mode="NEAREST", fill_value=0.0,
    )
    return tf.cast(warped, images.dtype), tf.cast(warped_masks, masks.dtype)
