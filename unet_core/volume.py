"""The Volume contract: every reader returns one, every writer takes one."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Volume:
    """A 3D image.

    voxels:    (i, j, k) float32. CT voxels are Hounsfield units (RescaleSlope/Intercept applied).
               For DICOM, i runs along a row (column index), j down the columns (row index) and k
               through the slices in order of position along the slice normal.
    affine:    (4, 4) float64 mapping (i, j, k, 1) to RAS+ millimetres (nibabel's convention).
    volume_id: stable, sanitised identifier, safe as an object name.
    sources:   the URIs the volume was read from.
    modality:  "CT", "MR", ... from DICOM; None when the format does not say (NIfTI), unless a
               job assumes one (`unet segment --assume-modality CT`).
    space:     what the affine's coordinates mean, as NIfTI's xform codes name it: "scanner"
               (DICOM; code 1), "aligned", "talairach", "mni", "template", or "unknown" (a NIfTI
               with both codes 0: its orientation cannot be trusted). Writers derive their codes
               from it.
    metadata:  small, de-identified (no names, IDs or birth dates unless asked for).
    """

    voxels: np.ndarray
    affine: np.ndarray
    volume_id: str
    modality: str | None = None
    sources: tuple[str, ...] = ()
    metadata: dict = field(default_factory=dict)
    space: str = "scanner"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.voxels.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k (column norms of the affine)."""
        return tuple(float(x) for x in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


MAX_POSITION_MM = 1e7  # 10 km: beyond it a coordinate is corrupt, and its arithmetic loses all precision
MAX_VOXEL_MM = 1e4
MIN_VOXEL_MM = 1e-4  # 0.1 micrometre: below any imaging device; smaller sizes underflow the geometry


def affine_problem(affine: np.ndarray) -> str | None:
    """Why a voxel-to-world affine cannot be a volume's grid (None when it can): values that are
    not finite, a voxel size that is zero or beyond MAX_VOXEL_MM, an origin beyond
    MAX_POSITION_MM, or axes so nearly parallel that the grid has no orientation (a shear within
    that, as some NIfTI writers store, is allowed)."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        return "the affine is not a finite 4x4 matrix"
    sizes = np.linalg.norm(a[:3, :3], axis=0)
    if not np.all((sizes >= MIN_VOXEL_MM) & (sizes <= MAX_VOXEL_MM)):
        return f"voxel sizes {sizes.tolist()} are not between {MIN_VOXEL_MM:g} and {MAX_VOXEL_MM:g} mm"
    if np.max(np.abs(a[:3, 3])) > MAX_POSITION_MM:
        return f"origin {a[:3, 3].tolist()} is beyond {MAX_POSITION_MM:g} mm"
    if abs(np.linalg.det(a[:3, :3] / sizes)) < 0.1:
        return "the voxel axes are (nearly) parallel: the grid has no orientation"
    return None


def sanitise(text: str, max_len: int = 64) -> str:
    """A string safe as one path component: [A-Za-z0-9._-], no leading dots, no "..", bounded length."""
    cleaned = re.sub(r"\.{2,}", "_", _SAFE.sub("_", text)).strip("._-")[:max_len]
    return cleaned or "unnamed"


def short_hash(*parts: str, length: int = 16) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:length]
