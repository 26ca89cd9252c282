"""Zip exports, and `read_volume` over S3 prefixes and in-memory bytes."""
from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest

from support.bundles import put
from support.dicom_factory import write_series
from unet_core.config import Limits
from unet_core.errors import ResourceLimitError, StorageError, UnreadableFileError
from unet_core.io import archive, read_object, read_volume, storage


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_dicom_series_from_a_prefix(store, tmp_path):
    paths, hu, _ = write_series(tmp_path / "s", noise=False)
    for p in paths:
        put(storage.join(store, "series", os.path.basename(p)), open(p, "rb").read())
    vol = read_volume(storage.join(store, "series"))
    np.testing.assert_array_equal(vol.voxels, hu)
    assert all(s.startswith(store) for s in vol.sources)


def test_missing_source(store):
    with pytest.raises(StorageError, match="no such object or prefix"):
        read_volume(storage.join(store, "absent/"))
    with pytest.raises(StorageError, match=r"absent\.nii\.gz: object not found"):
        read_volume(storage.join(store, "absent.nii.gz"))


def test_volume_from_bytes():
    from pydicom.data import get_testdata_file

    vol = read_volume(open(get_testdata_file("CT_small.dcm"), "rb").read())
    assert vol.shape == (128, 128, 1)


def test_zip_members_read_in_memory(store, tmp_path):
    paths, hu, _ = write_series(tmp_path / "s", noise=False)
    entries = {f"export/DICOM/{os.path.basename(p)}": open(p, "rb").read() for p in paths}
    entries["../../evil.dcm"] = b"x"
    entries["/abs/path.dcm"] = b"y"
    uri = put(storage.join(store, "export.zip"), _zip(entries))
    members = archive.list_members(storage.read_bytes(uri), uri)
    refused = {m.name: m.error for m in members if m.error}
    assert set(refused) == {"../../evil.dcm", "/abs/path.dcm"}
    assert all("escapes the archive folder" in e for e in refused.values())
    good = [m.uri for m in members if not m.error]
    assert good[0].startswith(uri + "!/export/DICOM/")
    vol = read_volume(good)
    np.testing.assert_array_equal(vol.voxels, hu)
    with pytest.raises(UnreadableFileError, match=r"evil\.dcm: member path escapes"):
        read_object(f"{uri}!/../../evil.dcm")


def test_zip_limits(tmp_path):
    data = _zip({"big.bin": b"\0" * 2_000_000, "a": b"", "b": b""})
    members = archive.list_members(data, "x.zip", Limits(max_decompressed_bytes=1_000_000))
    assert "expands to 2000000 bytes" in [m for m in members if m.name == "big.bin"][0].error
    with pytest.raises(ResourceLimitError, match="3 members exceed the limit of 2"):
        archive.list_members(data, "x.zip", Limits(max_zip_members=2))
    with pytest.raises(ResourceLimitError, match=r"x\.zip!/big\.bin: expands beyond the limit"):
        archive.read_member(data, "x.zip", "big.bin", Limits(max_decompressed_bytes=1_000_000))


def test_a_zip_is_opened_once_for_all_its_members(store, monkeypatch):
    """A series exported as members of one zip: decode reads the archive's central directory once
    and then the members through the same handle (on S3, ranged reads), never the whole archive
    per member; the bytes equal a member-by-member read."""
    from unet_core.io import read_object, read_objects

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(30):
            zf.writestr(f"EXPORT/IM{i:04d}", bytes([i]) * (1000 + i))
    uri = storage.join(store, "export.zip")
    storage.write_bytes(uri, buf.getvalue())
    members = [f"{uri}!/EXPORT/IM{i:04d}" for i in range(30)]
    expected = [read_object(m) for m in members]
    archive._SHARED.clear()
    opened, whole = [], []
    real_open, real_read = archive.Archive._open_checked, storage.read_bytes
    monkeypatch.setattr(archive.Archive, "_open_checked", classmethod(
        lambda cls, u, limits, size: opened.append(u) or real_open.__func__(cls, u, limits, size)))
    monkeypatch.setattr(storage, "read_bytes", lambda u, *a, **k: whole.append(u) or real_read(u, *a, **k))
    assert read_objects(members) == expected
    assert opened == [uri] and whole == []


def test_a_process_reads_an_unchanged_archive_directory_once_and_a_changed_one_again(tmp_path):
    import zipfile

    from unet_core.io import archive, read_objects

    path = tmp_path / "export.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.dcm", b"first")
        zf.writestr("b.dcm", b"second")
    uris = [f"{path}!/a.dcm", f"{path}!/b.dcm"]
    assert read_objects(uris) == [b"first", b"second"]
    opened = archive.Archive.shared(str(path))
    assert read_objects(uris[:1]) == [b"first"] and archive.Archive.shared(str(path)) is opened
    with zipfile.ZipFile(path, "w") as zf:  # replaced: another size, another time
        zf.writestr("a.dcm", b"replaced!")
    assert read_objects(uris[:1]) == [b"replaced!"]
    assert archive.Archive.shared(str(path)) is not opened
    for i in range(archive.SHARED_ARCHIVES + 2):  # only the most recent few stay open
        other = tmp_path / f"other{i}.zip"
        with zipfile.ZipFile(other, "w") as zf:
            zf.writestr("x", b"x")
        assert read_objects([f"{other}!/x"]) == [b"x"]
    assert len(archive._SHARED) == archive.SHARED_ARCHIVES


def test_a_volume_read_from_a_zip_on_s3_fetches_its_members_bytes_not_a_fixed_range(monkeypatch):
    """A zip of 12 series folders on S3 (moto's server behind a counter of the bytes its GETs
    return): reading one series' members fetches one range of about the members' own bytes (at
    most 1.2x their stored size; local headers are the rest), not an 8 MiB read-ahead (90x for
    small slices). A series larger than a range (made 256 KiB here) reads each byte once."""
    import random

    import boto3

    from jobs.bench.zipped import CountingS3
    from unet_core.io import read_objects

    monkeypatch.setattr(archive, "RANGE_BYTES", 256 * 1024)
    rng = random.Random(3)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for s in range(12):  # incompressible 3 KiB "slices", 40 per series; series 11 is 600 KiB
            for i in range(40 if s < 11 else 6):
                zf.writestr(f"series_{s:02d}/IM{i:04d}.dcm", rng.randbytes(3072 if s < 11 else 100 * 1024))
    data = buf.getvalue()
    archive._SHARED.clear()
    with CountingS3() as s3:
        boto3.client("s3").create_bucket(Bucket="zips")
        uri = "s3://zips/export.zip"
        storage.write_bytes(uri, data)
        infos = {i.filename: i for i in zipfile.ZipFile(io.BytesIO(data)).infolist()}
        for series in ("series_03", "series_07", "series_11"):
            names = sorted(n for n in infos if n.startswith(series + "/"))
            archive.Archive.shared(uri)  # the central directory, read once per process: not counted
            s3.counter.reset()
            got = read_objects([f"{uri}!/{n}" for n in names])
            stored = sum(infos[n].compress_size for n in names)
            served = s3.counter.snapshot()
            assert got == [zipfile.ZipFile(io.BytesIO(data)).read(n) for n in names]
            assert served["get_bytes"] <= 1.2 * stored, (series, served, stored)
            gets = served["requests"]["GET"]
            assert gets <= -(-stored // archive.RANGE_BYTES) + len(names) * (series == "series_11"), (series, gets)
    archive._SHARED.clear()
