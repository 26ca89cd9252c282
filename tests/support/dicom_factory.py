"""Small helpers that write real DICOM series with pydicom for the tests."""
from __future__ import annotations

import io
import os

import pydicom

from unet_core.synthetic import Phantom, SeriesSpec, dicom_series, to_bytes

PHANTOM = Phantom.random(7)


def write_series(folder, spec: SeriesSpec | None = None, **kwargs) -> tuple[list[str], object, object]:
    """Write a series into `folder`; returns (paths in instance order, HU, labels)."""
    files, hu, labels = dicom_series(PHANTOM, spec or SeriesSpec(rows=32, columns=32, n_slices=8), **kwargs)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, data in files:
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
    return paths, hu, labels


def edit(path: str, fn) -> None:
    """Rewrite a DICOM file after `fn(dataset)`."""
    ds = pydicom.dcmread(path)
    fn(ds)
    with open(path, "wb") as f:
        f.write(to_bytes(ds))


def read(path: str) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(open(path, "rb").read()))


def pydicom_test_files():
    """Every file of pydicom's own test data and of pydicom-data, listed from their folders
    (pydicom's get_testdata_files("*") also tries to download what pydicom-data lacks)."""
    from pathlib import Path

    import data_store
    import pydicom.data

    roots = [Path(pydicom.data.DATA_ROOT) / "test_files", Path(data_store.__file__).parent / "data"]
    return sorted(p for root in roots for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and not p.name.endswith((".py", ".pyc")))
