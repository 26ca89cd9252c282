"""Sliding-window tiles with overlap, Gaussian-weighted stitching, and mirrored copies (TTA).

nnU-Net's 2D inference, as pure numpy: a slice (at the target spacing) smaller than the patch is
padded to it, centred; tiles of `patch` x `patch` pixels start every (1 - overlap) x patch pixels
or closer, spread evenly, the last one flush with the border; each tile's prediction is weighted by
a Gaussian importance map (sigma 1/8 of the patch), the weighted sum divided by the summed weights,
and the padding cropped off. The layout is a pure function of the slice shape, the patch and the
overlap, so the finishing side recomputes it instead of carrying it with the probabilities.

Axis convention: slices (n, H, W, C), H along the canonical i axis; tiles (n * T, patch, patch, C)
slice-major (the T tiles of slice 0 first, row-major over the tile grid); mirrored tiles
(n * 4 * T, ...): each slice's T tiles under each mirror in turn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from unet_core.errors import ConfigError

SIGMA_FRACTION = 1.0 / 8.0  # nnU-Net's Gaussian importance map: sigma = patch / 8

# The 2D mirrors averaged by test-time augmentation, as the axes of a tile (0 = H, 1 = W) each flips.
MIRRORS: tuple[tuple[int, ...], ...] = ((), (0,), (1,), (0, 1))


def tile_starts(n: int, patch: int, overlap: float) -> np.ndarray:
    """Start offsets (int) of the tiles along an axis of n pixels (n >= patch: after padding).

    The fewest tiles whose step is at most (1 - overlap) x patch, spread evenly from 0 to
    n - patch, so the first tile is flush with one border and the last with the other."""
    if patch < 1 or n < patch:
        raise ConfigError(f"tiles of {patch} pixels cannot cover an axis of {n} (pad it to the patch first)")
    step = max(1.0, (1.0 - overlap) * patch)
    count = math.ceil((n - patch) / step) + 1
    return np.round(np.linspace(0, n - patch, count)).astype(np.intp) if count > 1 else np.zeros(1, np.intp)


@dataclass(frozen=True)
class TileLayout:
    """How one slice shape is padded and tiled. `shape` is the slice (H, W) at the target spacing;
    `padded` is at least the patch on each axis; `offset` where the slice sits in the padded array."""

    shape: tuple[int, int]
    patch: int
    overlap: float

    @property
    def padded(self) -> tuple[int, int]:
        return max(self.shape[0], self.patch), max(self.shape[1], self.patch)

    @property
    def offset(self) -> tuple[int, int]:
        return (self.padded[0] - self.shape[0]) // 2, (self.padded[1] - self.shape[1]) // 2

    @property
    def starts(self) -> tuple[np.ndarray, np.ndarray]:
        return tile_starts(self.padded[0], self.patch, self.overlap), tile_starts(self.padded[1], self.patch, self.overlap)

    @property
    def tiles_per_slice(self) -> int:
        si, sj = self.starts
        return len(si) * len(sj)


def gaussian_map(patch: int, sigma_fraction: float = SIGMA_FRACTION) -> np.ndarray:
    """(patch, patch) float32 importance weights, 1 at the centre, positive everywhere (about 1e-7
    in the corners at sigma = patch / 8), so every pixel a tile covers gets some weight."""
    return _gaussian_map(int(patch), float(sigma_fraction)).copy()


@lru_cache(maxsize=8)
def _gaussian_map(patch: int, sigma_fraction: float) -> np.ndarray:
    centre, sigma = (patch - 1) / 2.0, patch * sigma_fraction
    g = np.exp(-0.5 * ((np.arange(patch) - centre) / sigma) ** 2)
    w = np.outer(g, g)
    w /= w.max()
    w = w.astype(np.float32)
    w[w <= 0] = np.min(w[w > 0])  # never zero in float32: a pixel covered by a tile counts
    w.setflags(write=False)
    return w


def pad_slices(slices: np.ndarray, layout: TileLayout, value: float | np.ndarray) -> np.ndarray:
    """(n, H, W, C) -> (n, H', W', C) float32 padded to the layout, centred, with `value`: one for
    all, or (n,) one per slice."""
    x = np.asarray(slices, np.float32)
    if x.shape[1:3] != layout.shape:
        raise ConfigError(f"slices of {x.shape[1:3]} do not match the tile layout's {layout.shape}")
    if layout.padded == layout.shape:
        return x
    (oi, oj), (ph, pw) = layout.offset, layout.padded
    out = np.empty((x.shape[0], ph, pw, x.shape[3]), np.float32)
    out[:] = np.broadcast_to(np.asarray(value, np.float32), (x.shape[0],))[:, None, None, None]
    out[:, oi:oi + x.shape[1], oj:oj + x.shape[2]] = x
    return out


def extract_tiles(slices: np.ndarray, layout: TileLayout, pad_value: float | np.ndarray,
                  dtype: np.dtype | type = np.float32, out: np.ndarray | None = None) -> np.ndarray:
    """(n, H, W, C) slices -> (n * T, patch, patch, C) tiles of `dtype` (float32, or float16 for the
    model's input: the one cast the rows get), slice-major (`pad_slices` for the value). Written
    straight into `out` when given (a view of a larger array: no copy of the rows afterwards).
    One vectorised copy per tile position, over all n slices at once."""
    x = pad_slices(slices, layout, pad_value)
    si, sj = layout.starts
    p, n, c = layout.patch, x.shape[0], x.shape[3]
    t = len(si) * len(sj)
    if out is None:
        out = np.empty((n * t, p, p, c), dtype)
    elif out.shape != (n * t, p, p, c):
        raise ConfigError(f"tile buffer {out.shape} does not fit {n} slices of {t} tiles of {p} x {p} x {c}")
    grid = out.reshape(n, t, p, p, c)
    for a, (i, j) in enumerate((int(i), int(j)) for i in si for j in sj):
        grid[:, a] = x[:, i:i + p, j:j + p]  # the cast to out's dtype happens in this copy
    return out


def stitch(tiles: np.ndarray, layout: TileLayout) -> np.ndarray:
    """(n * T, patch, patch, K) tile predictions -> (n, H, W, K) float32 on the slice grid: the
    Gaussian-weighted mean of every tile covering a pixel, the padding cropped off. Vectorised over
    the n slices; one accumulation per tile position, through one reused float32 buffer."""
    p, t = layout.patch, layout.tiles_per_slice
    if tiles.ndim != 4 or tiles.shape[1:3] != (p, p) or tiles.shape[0] % t:
        raise ConfigError(f"tile predictions {tiles.shape} do not fit {t} tiles of {p} x {p} per slice")
    n, k = tiles.shape[0] // t, tiles.shape[3]
    acc = np.zeros((n, *layout.padded, k), np.float32)
    grid = tiles.reshape(n, t, p, p, k)
    weighted = np.empty((n, p, p, k), np.float32)
    for a, ((i, j), weight) in enumerate(_tile_weights(layout)):
        # float32(tile) * weight, as a cast then a product: the same numbers as astype() would give
        np.multiply(grid[:, a], weight[None, :, :, None], out=weighted, dtype=np.float32)
        acc[:, i:i + p, j:j + p] += weighted
    (oi, oj), (h, wd) = layout.offset, layout.shape
    return acc[:, oi:oi + h, oj:oj + wd]


@lru_cache(maxsize=16)
def _tile_weights(layout: TileLayout) -> tuple[tuple[tuple[int, int], np.ndarray], ...]:
    """((i, j), (p, p) float32 weights) per tile position: the Gaussian map divided by the sum of
    the maps over every tile covering each pixel. Normalised before, not after, accumulating: a
    pixel under one tile gets weight w / w = 1 exactly, so its prediction passes unchanged.
    Computed once per layout (a volume's runs of slices, and its volumes, share one)."""
    p = layout.patch
    w = _gaussian_map(p, SIGMA_FRACTION)
    si, sj = layout.starts
    positions = [(int(i), int(j)) for i in si for j in sj]
    norm = np.zeros(layout.padded, np.float32)
    for i, j in positions:
        norm[i:i + p, j:j + p] += w
    out = []
    for i, j in positions:
        weight = w / norm[i:i + p, j:j + p]
        weight.setflags(write=False)
        out.append(((i, j), weight))
    return tuple(out)


def mirrored(x: np.ndarray, tiles_per_slice: int) -> np.ndarray:
    """(n * T, p, p, C) tiles -> (n * 4 * T, p, p, C): each slice's tiles under each of MIRRORS in
    turn, so the rows of any run of slices stay one contiguous block (chunks can be cut anywhere)."""
    n = _slices_of(x.shape[0], tiles_per_slice)
    grid = x.reshape(n, tiles_per_slice, *x.shape[1:])
    return np.stack([_flip(grid, m) for m in MIRRORS], axis=1).reshape(-1, *x.shape[1:])


def unmirrored_mean(prob: np.ndarray, tiles_per_slice: int) -> np.ndarray:
    """(n * 4 * T, p, p, K) predictions of `mirrored` tiles -> (n * T, p, p, K) float32: each
    mirror's prediction flipped back, then the four averaged."""
    m = len(MIRRORS)
    n = _slices_of(prob.shape[0], m * tiles_per_slice)
    grid = np.asarray(prob).reshape(n, m, tiles_per_slice, *prob.shape[1:])
    out = np.zeros((n, tiles_per_slice, *prob.shape[1:]), np.float32)
    for a, mirror in enumerate(MIRRORS):
        out += _flip(grid[:, a], mirror)
    out /= np.float32(m)
    return out.reshape(-1, *prob.shape[1:])


def _flip(grid: np.ndarray, mirror: tuple[int, ...]) -> np.ndarray:
    """Flip the tile axes (H = 0, W = 1) of (n, T, p, p, C) tiles."""
    return np.flip(grid, axis=tuple(a + 2 for a in mirror)) if mirror else grid


def _slices_of(rows: int, per_slice: int) -> int:
    if per_slice < 1 or rows % per_slice:
        raise ConfigError(f"{rows} rows are not a whole number of slices of {per_slice} rows")
    return rows // per_slice
