"""Patches for the native recipe: one patch per slice, a third of each batch on foreground.

Slices of the native recipe keep their own grid at the target spacing (rows.WorkerRows), so a
batch is made of fixed-size patches cut from them, as nnU-Net's 2D data loader does:

- **Foreground oversampling.** The last `n_foreground(B) = ceil(B / 3)` positions of every batch
  of B are drawn to contain foreground: the patch is centred on a foreground pixel (label > 0)
  chosen uniformly among the slice's foreground pixels, then moved as little as needed to lie
  inside the slice, so that pixel stays in the patch. A slice without foreground at such a position
  gets a uniform patch (nnU-Net's rule too), so the fraction is exact over batches of slices that
  hold foreground, and a floor of what the data allows otherwise. nnU-Net forces
  `B - round(0.67 B)`; ceil(B / 3) is the same for B <= 5 and never fewer.
- **Other positions**: a patch at a uniform position inside the slice.
- **Padding.** A slice smaller than the patch along an axis is padded (centred) to the patch size:
  the image with each channel's minimum (the normalised value of the image's minimum), the mask
  with 0 (background).

Randomness comes only from the generator passed in, drawn in a fixed order (per position: the
foreground pixel, or the row then the column), so a seed gives the same patches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FOREGROUND_FRACTION = 1 / 3


def n_foreground(batch_size: int) -> int:
    """How many positions of a batch of `batch_size` are drawn to contain foreground."""
    return math.ceil(batch_size * FOREGROUND_FRACTION)


@dataclass(frozen=True)
class PatchBatch:
    images: np.ndarray  # (B, p, p, C) float32
    masks: np.ndarray  # (B, p, p, 1) float32 labels
    foreground_drawn: np.ndarray  # (B,) bool: the patch was centred on a foreground pixel
    origins: np.ndarray  # (B, 2) int: top-left (row, column) in the padded slice


def pad_to_patch(image: np.ndarray, mask: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """image (h, w, C), mask (h, w) -> both at least patch x patch, padded centred: the image with
    its per-channel minimum, the mask with 0. Slices already large enough come back unchanged."""
    h, w = mask.shape
    dh, dw = max(patch - h, 0), max(patch - w, 0)
    if not dh and not dw:
        return image, mask
    pads = ((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2))
    low = image.reshape(-1, image.shape[-1]).min(axis=0)
    padded = np.empty((h + dh, w + dw, image.shape[-1]), image.dtype)
    padded[...] = low
    padded[pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + w] = image
    return padded, np.pad(mask, pads, constant_values=0)


def _origin(extent: int, patch: int, centre: int | None, rng: np.random.Generator) -> int:
    if centre is None:
        return int(rng.integers(0, extent - patch + 1))
    return int(np.clip(centre - patch // 2, 0, extent - patch))


def sample_patches(images: list[np.ndarray], masks: list[np.ndarray], patch: int,
                   rng: np.random.Generator) -> PatchBatch:
    """One patch per slice. images: [(h_i, w_i, C) float32]; masks: [(h_i, w_i)] integer labels;
    the i-th pair is batch position i (positions >= B - n_foreground(B) are drawn on foreground)."""
    if len(images) != len(masks) or not images:
        raise ValueError(f"{len(images)} images and {len(masks)} masks: a batch needs one mask per image")
    batch = len(images)
    first_forced = batch - n_foreground(batch)
    channels = images[0].shape[-1]
    x = np.empty((batch, patch, patch, channels), np.float32)
    y = np.empty((batch, patch, patch, 1), np.float32)
    drawn = np.zeros(batch, bool)
    origins = np.empty((batch, 2), np.int64)
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        image, mask = pad_to_patch(image, mask, patch)
        h, w = mask.shape
        centre: tuple[int, int] | tuple[None, None] = (None, None)
        if i >= first_forced:
            fg = np.flatnonzero(mask)
            if fg.size:
                r, c = divmod(int(fg[rng.integers(fg.size)]), w)
                centre, drawn[i] = (r, c), True
        top, left = _origin(h, patch, centre[0], rng), _origin(w, patch, centre[1], rng)
        origins[i] = top, left
        x[i] = image[top:top + patch, left:left + patch]
        y[i, ..., 0] = mask[top:top + patch, left:left + patch]
    return PatchBatch(x, y, drawn, origins)
