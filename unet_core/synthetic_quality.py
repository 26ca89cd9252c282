"""A synthetic CT task where resolution matters, for `unet bench quality`.

Each case is analytic in RAS world millimetres, so every spacing is an exact rendering of the same
anatomy: an elliptic body (soft tissue in a fat rim), bones drawn as thin cortical shells
(0.8-2 mm of 1,100 HU around 80 HU marrow) and small contrast-filled vessels (0.8-2.5 mm radius,
320 HU) that drift slowly along z. Intensities are averaged over 3 x 3 points per pixel, as a
scanner's finite pixel averages a thin edge (partial volume); labels are the shapes at the pixel
centres. Gaussian noise is added after.

Labels: 0 background, 1 cortical bone, 2 vessel. The task: training cases at mixed in-plane
spacings (0.6-1.0 mm), and a held-out case finer than the training median.

Written in the nnU-Net raw layout (`unet prepare --dataset`): dataset.json, imagesTr/<case>_0000.nii.gz,
labelsTr/<case>.nii.gz, and the held-out case as imagesTs/<case>_0000.nii.gz, labelsTs/<case>.nii.gz.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from unet_core.errors import ConfigError
from unet_core.io import storage

HU_AIR, HU_FAT, HU_TISSUE, HU_MARROW, HU_CORTEX, HU_VESSEL = -1000.0, -100.0, 40.0, 80.0, 1100.0, 320.0
CORTEX, VESSEL = 1, 2
LABEL_NAMES = ["background", "cortical_bone", "vessel"]
SUPERSAMPLE = 3  # points per pixel along each in-plane axis for the intensities


@dataclass(frozen=True)
class Bone:
    center: tuple[float, float]  # x, y mm
    radii: tuple[float, float]  # outer half axes, mm
    cortex: float  # shell thickness, mm


@dataclass(frozen=True)
class Vessel:
    center: tuple[float, float]
    drift: tuple[float, float]  # mm of x, y per mm of z
    radius: float


@dataclass(frozen=True)
class QualityPhantom:
    """One case's anatomy in mm, scaled to a field of view `fov` (the body's width is 0.84 fov)."""

    fov: float
    body: tuple[float, float]
    fat: float
    bones: tuple[Bone, ...] = field(default_factory=tuple)
    vessels: tuple[Vessel, ...] = field(default_factory=tuple)
    noise_hu: float = 15.0

    @classmethod
    def random(cls, seed: int, fov: float = 320.0) -> "QualityPhantom":
        rng = np.random.default_rng(seed)
        a, b = 0.42 * fov * rng.uniform(0.9, 1.0), 0.30 * fov * rng.uniform(0.9, 1.0)
        scale = fov / 320.0
        bones = tuple(Bone(center=(float(rng.uniform(-0.65, 0.65) * a), float(rng.uniform(-0.6, 0.6) * b)),
                           radii=tuple(float(r) for r in rng.uniform(7, 16, 2) * max(scale, 0.35)),  # type: ignore[arg-type]
                           cortex=float(rng.uniform(0.8, 2.0)))
                      for _ in range(int(rng.integers(3, 6))))
        vessels = tuple(Vessel(center=(float(rng.uniform(-0.7, 0.7) * a), float(rng.uniform(-0.7, 0.7) * b)),
                               drift=tuple(float(d) for d in rng.uniform(-0.15, 0.15, 2)),  # type: ignore[arg-type]
                               radius=float(rng.uniform(0.8, 2.5)))
                        for _ in range(int(rng.integers(6, 11))))
        return cls(fov=fov, body=(a, b), fat=float(rng.uniform(5, 12) * max(scale, 0.35)), bones=bones, vessels=vessels)

    def sample(self, xs: np.ndarray, ys: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
        """(HU float32, labels uint8) of shape (len(xs), len(ys)) on the grid of world points
        (xs[i], ys[j], z) in mm, without noise. Each shape is drawn in its bounding box only."""
        x, y = xs[:, None], ys[None, :]
        hu = np.full((len(xs), len(ys)), HU_AIR, np.float32)
        labels = np.zeros(hu.shape, np.uint8)
        a, b = self.body
        inner = (x / (a - self.fat)) ** 2 + (y / (b - self.fat)) ** 2 <= 1.0
        hu[(x / a) ** 2 + (y / b) ** 2 <= 1.0] = HU_FAT
        hu[inner] = HU_TISSUE
        for bone in self.bones:
            (cx, cy), (rx, ry) = bone.center, bone.radii
            box = _box(xs, ys, cx, cy, rx, ry)
            bx, by = (x - cx)[box[0]], (y - cy)[:, box[1]]
            outer = (bx / rx) ** 2 + (by / ry) ** 2 <= 1.0
            marrow = (bx / (rx - bone.cortex)) ** 2 + (by / (ry - bone.cortex)) ** 2 <= 1.0
            inside = inner[box]
            h, lab = hu[box], labels[box]  # views: painting them paints the slice
            h[marrow & inside], lab[marrow & inside] = HU_MARROW, 0
            h[outer & ~marrow & inside], lab[outer & ~marrow & inside] = HU_CORTEX, CORTEX
        for v in self.vessels:
            cx, cy = v.center[0] + v.drift[0] * z, v.center[1] + v.drift[1] * z
            box = _box(xs, ys, cx, cy, v.radius, v.radius)
            lumen = ((x - cx)[box[0]] ** 2 + (y - cy)[:, box[1]] ** 2 <= v.radius**2) & inner[box] & (labels[box] == 0)
            h, lab = hu[box], labels[box]
            h[lumen], lab[lumen] = HU_VESSEL, VESSEL
        return hu, labels


def _box(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> tuple[slice, slice]:
    """The index ranges of sorted axes xs, ys covering [cx - rx, cx + rx] x [cy - ry, cy + ry]."""
    i0, i1 = np.searchsorted(xs, [cx - rx, cx + rx])
    j0, j1 = np.searchsorted(ys, [cy - ry, cy + ry])
    return slice(int(i0), int(i1) + 1), slice(int(j0), int(j1) + 1)


def render(phantom: QualityPhantom, spacing: float, n_slices: int, slice_step: float = 3.0,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(HU (i, j, k) float32 rounded to integers, labels (i, j, k) uint8, affine 4x4) of an axial
    grid of `spacing` mm pixels covering the field of view, `n_slices` slices `slice_step` apart.
    The affine is RAS+ with i along x and j along y, centred on the origin."""
    if not spacing > 0 or n_slices < 1:
        raise ConfigError(f"spacing must be positive and n_slices at least 1, got {spacing}, {n_slices}")
    n = int(round(phantom.fov / spacing))
    centres = (np.arange(n) - (n - 1) / 2) * spacing
    zs = (np.arange(n_slices) - (n_slices - 1) / 2) * slice_step
    offsets = ((np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5) * spacing
    hu = np.zeros((n, n, n_slices), np.float32)
    labels = np.zeros((n, n, n_slices), np.uint8)
    fine = (centres[:, None] + offsets[None, :]).ravel()
    for k, z in enumerate(zs):
        labels[..., k] = phantom.sample(centres, centres, float(z))[1]
        hu[..., k] = phantom.sample(fine, fine, float(z))[0].reshape(n, SUPERSAMPLE, n, SUPERSAMPLE).mean(axis=(1, 3))
    if phantom.noise_hu > 0:
        hu += np.random.default_rng(seed).normal(0.0, phantom.noise_hu, hu.shape).astype(np.float32)
    affine = np.diag([spacing, spacing, slice_step, 1.0])
    affine[:3, 3] = [centres[0], centres[0], zs[0]]
    return np.round(hu), labels, affine


@dataclass(frozen=True)
class QualityTask:
    """The benchmark's cases: training spacings (mixed) and the held-out case's (finer)."""

    train_spacings: tuple[float, ...] = (0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 0.8)
    heldout_spacing: float = 0.6
    fov: float = 320.0
    n_slices: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.heldout_spacing < float(np.median(self.train_spacings)):
            raise ConfigError(f"the held-out spacing {self.heldout_spacing} must be finer than the training median "
                              f"{np.median(self.train_spacings)}")


def _nifti(array: np.ndarray, affine: np.ndarray) -> bytes:
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def write_quality_task(root: str, task: QualityTask) -> dict[str, str]:
    """Write the task below `root` in the nnU-Net raw layout. Returns {"heldout_image", "heldout_label"}."""
    meta = {"channel_names": {"0": "CT"}, "labels": {name: k for k, name in enumerate(LABEL_NAMES)},
            "numTraining": len(task.train_spacings), "file_ending": ".nii.gz"}
    storage.write_bytes(storage.join(root, "dataset.json"), json.dumps(meta, indent=1).encode())
    for n, s in enumerate(task.train_spacings):
        hu, labels, affine = render(QualityPhantom.random(task.seed * 1000 + n, task.fov), s, task.n_slices,
                                    seed=task.seed * 1000 + n)
        storage.write_bytes(storage.join(root, "imagesTr", f"q{n:03d}_0000.nii.gz"), _nifti(hu.astype(np.int16), affine))
        storage.write_bytes(storage.join(root, "labelsTr", f"q{n:03d}.nii.gz"), _nifti(labels, affine))
    hu, labels, affine = render(QualityPhantom.random(task.seed * 1000 + 999, task.fov), task.heldout_spacing,
                                task.n_slices, seed=task.seed * 1000 + 999)
    out = {"heldout_image": storage.join(root, "imagesTs", "heldout_0000.nii.gz"),
           "heldout_label": storage.join(root, "labelsTs", "heldout.nii.gz")}
    storage.write_bytes(out["heldout_image"], _nifti(hu.astype(np.int16), affine))
    storage.write_bytes(out["heldout_label"], _nifti(labels, affine))
    return out


__all__ = ["LABEL_NAMES", "QualityPhantom", "QualityTask", "render", "write_quality_task"]
