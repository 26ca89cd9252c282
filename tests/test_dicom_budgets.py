"""Budgets and speed of DICOM reading: deflated data inflated within the budget (header only at
the scan, pixel data into one buffer at decode), and `unet bench io --check`."""
from __future__ import annotations

import io
import re

import numpy as np
import pydicom
import pytest

from support.dicom_factory import write_series
from unet_core.errors import ResourceLimitError
from unet_core.io.dicom.header import scan_header
from unet_core.synthetic import SeriesSpec


def test_a_deflate_bomb_is_stopped_at_the_budget_not_inflated_whole(tmp_path):
    """A deflated data set whose private element inflates far past --max-decompressed-bytes: the
    scan and the decode stop at the budget (a resource_limit row), reading a few MiB at most."""
    import tracemalloc

    from unet_core.errors import ResourceLimitError
    from unet_core.io.dicom.pixels import decode_frames

    paths, _, _ = write_series(tmp_path / "s", SeriesSpec(rows=16, columns=16, n_slices=1))
    ds = pydicom.dcmread(paths[0])
    ds.add_new(0x00991010, "OB", b"\0" * (64 * 2**20))  # 64 MiB of zeros: about 64 KiB deflated
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    assert len(data) < 2**20
    budget = 8 * 2**20
    tracemalloc.start()
    h = scan_header(data, "bomb.dcm", max_inflated=budget)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert h.kind == "error" and h.error_type == "resource_limit" and "inflates beyond" in h.reason
    assert peak < 3 * budget  # the stream stops at the budget
    with pytest.raises(ResourceLimitError):
        decode_frames(data, "bomb.dcm", max_inflated=budget)
    ok = scan_header(data, "bomb.dcm", max_inflated=128 * 2**20)  # within a larger budget it is an image
    assert ok.kind == "image" and ok.transfer_syntax == pydicom.uid.DeflatedExplicitVRLittleEndian


@pytest.fixture(scope="module")
def deflated_multiframe(tmp_path_factory) -> tuple[bytes, np.ndarray]:
    """A deflated object of 24 frames of 512 x 512 signed values (12 MiB of pixel data; values
    that repeat, so deflate is quick), and its stored values."""
    paths, _, _ = write_series(tmp_path_factory.mktemp("deflated"), SeriesSpec(rows=512, columns=512, n_slices=1))
    ds = pydicom.dcmread(paths[0])
    stored = np.resize(np.random.default_rng(5).integers(-1000, 2000, 4099, dtype=np.int16), (24, 512, 512))
    ds.NumberOfFrames, ds.PixelData = 24, stored.tobytes()
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), stored


def test_the_header_scan_of_a_deflated_object_inflates_its_header_only(deflated_multiframe):
    """A deflated object whose pixel data inflates to 12 MiB: the scan inflates the header (and at
    most one inflate step past it), never the pixel data. It once inflated the whole object."""
    import tracemalloc

    from unet_core.io.dicom.parse import INFLATE_STEP, inflating_reader, parse_deflated

    data, _ = deflated_multiframe
    reader = inflating_reader(data, "big.dcm", 2**31)
    ds, at_pixels = parse_deflated(reader, "big.dcm")
    assert at_pixels and "PixelData" not in ds and int(ds.NumberOfFrames) == 24
    assert reader.inflated <= INFLATE_STEP, reader.inflated
    tracemalloc.start()
    h = scan_header(data, "big.dcm")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert h.kind == "image" and h.frames == 24, h.reason
    assert peak < 4 * INFLATE_STEP, peak


def test_a_deflated_object_is_inflated_into_one_buffer(deflated_multiframe):
    """The full decode of a deflated object holds its pixel data once (inflated straight into the
    buffer the stored values view), plus the reader's window: not the inflated stream, a joined
    copy and pydicom's copy of the pixel value, which took the deflate bomb to twice its budget."""
    import tracemalloc

    from unet_core.io.dicom.pixels import decode_frames

    data, stored = deflated_multiframe
    pixel_bytes = stored.nbytes  # 12 MiB
    tracemalloc.start()
    ds, pixels = decode_frames(data, "big.dcm")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert np.array_equal(pixels, stored)
    assert peak < pixel_bytes + 4 * 2**20, (peak, pixel_bytes)
    with pytest.raises(ResourceLimitError, match=f"pixel data \\({pixel_bytes} bytes\\) inflates beyond"):  # checked before it is allocated
        decode_frames(data, "big.dcm", max_inflated=pixel_bytes)


def test_bench_io_check_exits_3_when_a_ratio_falls_short_of_its_target(monkeypatch, capsys, tmp_path):
    """`unet bench io --check` prints each measured ratio against its target and exits 3 when one
    falls short (a target no code can reach here), 0 when all are met (targets anyone meets)."""
    from jobs.bench import _main, common
    from jobs.bench import io as bench_io

    def no_codec(*_):
        raise ImportError("JPEG 2000 left out of this test")  # its encoding is most of the bench's time

    monkeypatch.setattr(bench_io, "_j2k_pair", no_codec)
    argv = ["io", "--check", "--io-slices", "2", "--io-repeats", "1", "--workdir", str(tmp_path)]
    monkeypatch.setitem(common.TARGETS, "io.header_scan", common.Target("header scan", at_least=1e9))
    assert _main(argv) == 3
    out = capsys.readouterr().out
    assert re.search(r"FAILED io\.header_scan +[\d.]+x +target >= 1e\+09", out), out
    assert re.search(r"(ok|FAILED) +io\.uncompressed +[\d.]+x +target >= 1 ", out), out
    for key in common.TARGETS:
        monkeypatch.setitem(common.TARGETS, key, common.Target(key, at_least=0.0))
    assert _main(argv) == 0
    assert "FAILED" not in capsys.readouterr().out
