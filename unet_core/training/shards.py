"""Training shards: labelled cases -> rows of 2D slices (the Parquet contract).

One row per slice, on the canonical (closest-RAS) grid so every orientation yields axial slices:
    case_id         string   sanitised case identifier
    slice_index     int32    k on the canonical grid
    image           binary   float16 (height, width, channels), C order, normalised as the plan says
    mask            binary   uint8 (height, width) labels, C order
    height, width   int32    the slice's size in the shard: recipe "seed": both `size`; recipe
                             "native": the slice at the target spacing (`recipe.resample.target_shape`)
    size, channels  int32    `size` is the seed's input size (native: the patch size)
    spacing_x/_y    float32  source in-plane voxel size in mm
    foreground      float32  fraction of mask pixels > 0
    split           string   "train" | "val": decided per case, never per slice
Shards written before the native recipe have no height / width: there both are `size`.
"""
from __future__ import annotations

import hashlib
import math
import random
from dataclasses import replace
from typing import Iterator

import numpy as np

from unet_core.config import PreprocessConfig
from unet_core.errors import InvalidVolumeError
from unet_core.io.orientation import canonical_grid, to_canonical
from unet_core.preprocessing import resize_nearest, slices_to_model_input
from unet_core.recipe.slices import native_masks, native_model_input
from unet_core.volume import Volume


def split_cases(case_ids: list[str], val_fraction: float, seed: int) -> dict[str, str]:
    """case id -> "train" | "val". Seeded, independent of input order; at least one validation
    case when there are two or more cases and val_fraction > 0."""
    ids = sorted(set(case_ids))
    rng = random.Random(seed)
    rng.shuffle(ids)
    n_val = int(round(len(ids) * val_fraction))
    if val_fraction > 0 and len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    return {case: ("val" if i < n_val else "train") for i, case in enumerate(ids)}


def check_pair(image: Volume, mask: Volume, case_id: str, atol_mm: float = 1e-3) -> None:
    """Image and mask must share the voxel grid; the error names the case and both grids."""
    if image.shape != mask.shape:
        raise InvalidVolumeError(
            f"case {case_id}: image shape {image.shape} differs from mask shape {mask.shape}", uri=case_id
        )
    if not np.allclose(image.affine, mask.affine, atol=atol_mm):
        raise InvalidVolumeError(
            f"case {case_id}: image and mask affines differ by up to "
            f"{np.abs(image.affine - mask.affine).max():.4f} mm; resample the mask onto the image grid", uri=case_id,
        )
    labels = mask.voxels
    if not np.array_equal(labels, np.round(labels)) or labels.min() < 0 or labels.max() > 255:
        raise InvalidVolumeError(f"case {case_id}: mask values must be integer labels 0..255", uri=case_id)


def canonical_case(image: Volume, mask: Volume, case_id: str, binary: bool = True,
                   foreground_labels: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(voxels (i, j, k), labels (i, j, k) uint8, spacing (3,) mm) of a case on the canonical grid,
    the mask as it will be trained: binary is `labels in foreground_labels` (default: any non-zero
    label), otherwise the labels themselves."""
    check_pair(image, mask, case_id)
    vox, _ = to_canonical(image.voxels, image.affine)
    lab, _ = to_canonical(mask.voxels, mask.affine)
    lab = lab.astype(np.uint8)
    if binary:
        fg_mask = np.isin(lab, foreground_labels) if foreground_labels else lab > 0
        lab = fg_mask.astype(np.uint8)
    spacing = np.linalg.norm(canonical_grid(image.affine, image.shape)[1][:3, :3], axis=0)
    return vox, lab, spacing


def case_slices(
    image: Volume, mask: Volume, case_id: str, split: str, cfg: PreprocessConfig,
    empty_slice_ratio: float | None = None, seed: int = 0, binary: bool = True,
    foreground_labels: tuple[int, ...] | None = None,
) -> Iterator[dict]:
    """Yield the shard rows of one case. With `empty_slice_ratio = r`, keep at most r empty
    slices per foreground slice (chosen with a seed), as nnU-Net-style foreground oversampling.
    Binary masks are `labels in foreground_labels` (default: any non-zero label). Recipe "seed"
    resizes every slice to input_size; recipe "native" resamples to the target spacing."""
    vox, lab, spacing = canonical_case(image, mask, case_id, binary, foreground_labels)
    slices = np.moveaxis(vox, 2, 0)  # (k, i, j)
    masks = np.moveaxis(lab, 2, 0)
    fg = masks.reshape(len(masks), -1).mean(axis=1)
    keep = np.arange(len(masks))
    if empty_slice_ratio is not None:
        full, empty = keep[fg > 0], keep[fg == 0]
        n_empty = min(len(empty), int(math.ceil(empty_slice_ratio * max(len(full), 1))))
        rng = np.random.default_rng(int(hashlib.sha256(f"{seed}:{case_id}".encode()).hexdigest()[:8], 16))
        keep = np.sort(np.concatenate([full, rng.choice(empty, n_empty, replace=False)]))
    if cfg.recipe == "native":
        in_plane = (float(spacing[0]), float(spacing[1]))
        x = native_model_input(slices, in_plane, cfg)  # (k, h, w, C) at the target spacing
        y = native_masks(masks, in_plane, cfg)
    else:
        x = slices_to_model_input(slices, cfg)  # (k, s, s, C), context from neighbouring slices
        y = resize_nearest(masks, (cfg.input_size, cfg.input_size))
    height, width = int(x.shape[1]), int(x.shape[2])
    for k in keep:
        yield {
            "case_id": case_id, "slice_index": int(k),
            "image": x[k].astype(np.float16).tobytes(), "mask": np.ascontiguousarray(y[k]).tobytes(),
            "height": height, "width": width,
            "size": cfg.input_size, "channels": cfg.channels,
            "spacing_x": float(spacing[0]), "spacing_y": float(spacing[1]),
            "foreground": float(fg[k]), "split": split,
        }


def decode_rows(images: np.ndarray, masks: np.ndarray, size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns of shard bytes -> (images (B, s, s, C) float32, masks (B, s, s, 1) float32)."""
    x = np.stack([np.frombuffer(b, np.float16) for b in images]).reshape(-1, size, size, channels)
    y = np.stack([np.frombuffer(b, np.uint8) for b in masks]).reshape(-1, size, size, 1)
    return x.astype(np.float32), y.astype(np.float32)


def image2d_rows(pixels: np.ndarray, bits: int, mask: np.ndarray, case_id: str, split: str,
                 cfg: PreprocessConfig) -> list[dict]:
    """The one shard row of a 2D case (the seed's PNG / TIFF layout)."""
    if cfg.modality == "CT":
        raise InvalidVolumeError(
            f"case {case_id}: 2D {bits}-bit images need --modality uint{bits}, not CT windowing", uri=case_id
        )
    if cfg.recipe == "native":
        # A PNG / TIFF has no spacing: its pixels are taken as they are, normalised.
        x = native_model_input(pixels[None].astype(np.float32), (1.0, 1.0), replace(cfg, target_spacing=None))[0]
        y = mask
    else:
        x = slices_to_model_input(pixels[None].astype(np.float32), cfg)[0]
        y = resize_nearest(mask, (cfg.input_size, cfg.input_size))
    return [{
        "case_id": case_id, "slice_index": 0, "image": x.astype(np.float16).tobytes(),
        "mask": np.ascontiguousarray(y, dtype=np.uint8).tobytes(), "height": int(x.shape[0]),
        "width": int(x.shape[1]), "size": cfg.input_size,
        "channels": cfg.channels, "spacing_x": 1.0, "spacing_y": 1.0,
        "foreground": float((mask > 0).mean()), "split": split,
    }]
