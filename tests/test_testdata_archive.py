"""Every file of pydicom's and pydicom-data's test data as one archive: `unet segment` ends with exit
0 or 3, every file is accounted for in the series index, and no row is an `internal` error (an
exception nobody expected). Real files of every kind: compressed syntaxes, big endian, deflated,
enhanced multi-frame, waveforms, SR, DICOMDIR, truncated and broken ones."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support.bundles import tiny_bundle
from support.dicom_factory import pydicom_test_files
from support.jobrun import run_unet

pytestmark = pytest.mark.e2e


def test_pydicom_test_data_as_one_archive(tmp_path):

    from unet_core.segmentation.tables import read_series_index, read_volume_table

    archive = tmp_path / "archive"
    files = pydicom_test_files()
    for i, src in enumerate(files):
        dst = archive / f"{i // 50:02d}" / f"{i:04d}_{src.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    tiny_bundle(str(tmp_path / "bundle"), modality="uint16", name="any")
    out = tmp_path / "out"
    rc, text = run_unet("segment", "--input", str(archive), "--model", str(tmp_path / "bundle"), "--output", str(out),
                        "--max-volume-bytes", str(256 * 2**20), "--keep-localizers", timeout=1800)
    assert rc in (0, 3), text[-4000:]
    index = read_series_index(str(out))
    listed = {Path(r["object_uri"]).name for r in index}
    assert {f"{i:04d}_{src.name}" for i, src in enumerate(files)} <= listed
    rows = read_volume_table(str(out))
    internal = [r for r in rows if r["error_type"] == "internal"]
    assert internal == [], internal[:5]
    # every single-slice file is decoded and segmented too (more decode paths); --keep-localizers
    # adds the few typed LOCALIZER
    assert sum(r["status"] == "ok" for r in rows) >= 20, sorted({(r["status"], r["error_type"]) for r in rows})
