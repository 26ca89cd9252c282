"""Folders the safety tests point jobs at: a small DICOM archive, and a digest of every file under
a folder (to show that a job left them byte for byte)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from unet_core.synthetic import Phantom, SeriesSpec, dicom_series


def small_archive(root: Path, n_series: int = 2) -> None:
    """`n_series` CT series of 4 slices of 32 x 32 in root/series<k>/."""
    for s in range(n_series):
        spec = SeriesSpec(rows=32, columns=32, n_slices=4, pixel_spacing=(12.0, 12.0), slice_step=15.0)
        for name, data in dicom_series(Phantom.random(s), spec, seed=s)[0]:
            path = root / f"series{s}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def digest(root) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under `root`."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out
