from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from support.bundles import put
from unet_core.config import Limits
from unet_core.errors import (
    EmptyFileError,
    InvalidVolumeError,
    ResourceLimitError,
    TruncatedFileError,
)
from unet_core.io import mask_to_nifti_bytes, read_volume, storage
from unet_core.io.nifti import read_nifti
from unet_core.synthetic import Phantom, nifti_case


def _affine():
    a = np.array([[-0.8, 0.1, 0, 120.0], [0.05, 0.9, 0.0, -80.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])
    return a


def _nii(data, affine=None, gz=True, scale=None, **hdr) -> bytes:
    img = nib.Nifti1Image(data, _affine() if affine is None else affine)
    img.set_sform(img.affine, code=2)
    img.set_qform(img.affine, code=1)
    if scale:
        img.header.set_slope_inter(*scale)
    raw = img.to_bytes()
    return gzip.compress(raw) if gz else raw


def test_roundtrip_with_scaling_and_sform(store):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    uri = put(storage.join(store, "case_001.nii.gz"), _nii(data, scale=(2.0, -10.0)))
    vol = read_volume(uri)
    np.testing.assert_allclose(vol.voxels, data * 2.0 - 10.0)
    np.testing.assert_allclose(vol.affine, _affine(), atol=1e-5)
    assert "case_001" not in vol.volume_id and len(vol.volume_id) == len("nii-") + 16  # no file name in ids
    assert vol.metadata == {}
    assert vol.space == "aligned" and vol.modality is None  # NIfTI does not say which modality


def test_uncompressed_4d_single_volume_and_bytes():
    data = np.random.default_rng(0).random((3, 4, 5, 1)).astype(np.float32)
    vol = read_volume(_nii(data, gz=False))
    assert vol.shape == (3, 4, 5)
    np.testing.assert_array_equal(vol.voxels, data[..., 0])


def test_mask_writer_keeps_grid_and_affine(store):
    src = put(storage.join(store, "img.nii.gz"), _nii(np.zeros((6, 7, 8), np.int16)))
    vol = read_volume(src)
    labels = (np.random.default_rng(1).random(vol.shape) > 0.5).astype(np.uint8)
    mask_uri = put(storage.join(store, "mask.nii.gz"), mask_to_nifti_bytes(labels, vol))
    reloaded = nib.Nifti1Image.from_bytes(gzip.decompress(storage.read_bytes(mask_uri)))
    source = nib.Nifti1Image.from_bytes(gzip.decompress(storage.read_bytes(src)))
    assert reloaded.shape == source.shape and reloaded.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(reloaded.affine, source.affine)
    assert int(reloaded.header["sform_code"]) == 2
    np.testing.assert_array_equal(np.asarray(reloaded.dataobj), labels)


def test_mask_writer_refuses_other_shape():
    vol = read_volume(_nii(np.zeros((3, 3, 3), np.int16)))
    with pytest.raises(InvalidVolumeError, match=r"mask shape \(2, 3, 3\) differs"):
        mask_to_nifti_bytes(np.zeros((2, 3, 3), np.uint8), vol)


def test_phantom_case_roundtrip():
    img, lab = nifti_case(Phantom.random(0), np.diag([3.0, 3.0, 5.0, 1.0]), (32, 32, 12))
    vol, mask = read_volume(img), read_volume(lab)
    assert vol.shape == mask.shape == (32, 32, 12)
    assert set(np.unique(mask.voxels)) <= {0, 1, 2, 3} and (mask.voxels == 1).any()


# ---- bad input --------------------------------------------------------------------------------
def test_empty(tmp_path):
    (tmp_path / "e.nii.gz").write_bytes(b"")
    with pytest.raises(EmptyFileError, match=r"e\.nii\.gz: empty file"):
        read_volume(str(tmp_path / "e.nii.gz"))


def test_truncated_gz(tmp_path):
    data = _nii(np.random.default_rng(0).random((20, 20, 20)).astype(np.float32))
    (tmp_path / "t.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedFileError, match=r"t\.nii\.gz: .*truncated"):
        read_volume(str(tmp_path / "t.nii.gz"))


def test_truncated_uncompressed(tmp_path):
    data = _nii(np.zeros((20, 20, 20), np.float32), gz=False)
    (tmp_path / "t.nii").write_bytes(data[:-100])
    with pytest.raises(TruncatedFileError, match=r"t\.nii: .* bytes where the header declares"):
        read_volume(str(tmp_path / "t.nii"))


def test_nan_voxels():
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    with pytest.raises(InvalidVolumeError, match="2 voxels are NaN or infinite"):
        read_nifti(_nii(data), "nan.nii.gz")


@pytest.mark.parametrize("shape, what", [((8, 8), "2D"), ((4, 4, 4, 2), "4D"), ((2, 2, 2, 1, 2), "5D")])
def test_wrong_dimensionality(shape, what):
    with pytest.raises(InvalidVolumeError, match=rf"dims.nii.gz: a {what} image of shape"):
        read_nifti(_nii(np.zeros(shape, np.float32)), "dims.nii.gz")


def test_gzip_bomb_is_stopped_at_the_limit():
    bomb = _nii(np.zeros((200, 200, 200), np.uint8))  # 8 MB of zeros in a few KB
    assert len(bomb) < 100_000
    with pytest.raises(ResourceLimitError, match="gzip expands beyond the limit of 1000000 bytes"):
        read_nifti(bomb, "bomb.nii.gz", Limits(max_decompressed_bytes=1_000_000))


def test_a_gzip_bomb_header_is_peeked_in_one_step_at_the_default_budget():
    """A .nii.gz whose stream goes on with 64 MiB of zeros past a small image, read at the default
    budget (2 GiB): the header peek (scan and decode) inflates one step, and the decode stops
    just past the image's declared bytes. The peek once inflated up to the whole budget (a job
    meeting the bombs at the default budget peaked at 2.30 GiB in one process with it, 0.91 GiB
    without: tests/test_bombs_memory.py)."""
    import tracemalloc

    from support.bombs import gzip_bomb_nifti
    from unet_core.io.nifti import GUNZIP_STEP, gunzip_limited, nifti_geometry

    bomb = gzip_bomb_nifti(64 * 2**20)
    tracemalloc.start()
    head = gunzip_limited(bomb, Limits().max_decompressed_bytes, "bomb.nii.gz", stop_after=544)
    geometry = nifti_geometry(bomb[:64 * 1024], "bomb.nii.gz")
    with pytest.raises(ResourceLimitError, match="gzip expands beyond the limit"):
        read_nifti(bomb, "bomb.nii.gz")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert 544 <= len(head) <= GUNZIP_STEP and geometry is not None
    assert peak < 8 * GUNZIP_STEP, peak  # the bomb inflated whole would be 64 MiB, twice over


def test_declared_size_beyond_budget_is_refused_before_reading():
    data = _nii(np.zeros((100, 100, 100), np.uint8))
    with pytest.raises(ResourceLimitError, match=r"declared shape \(100, 100, 100\) needs 4000000 bytes"):
        read_nifti(data, "big.nii.gz", Limits(max_volume_bytes=3_999_999))


def test_junk_named_nifti(tmp_path):
    (tmp_path / "junk.nii").write_bytes(b"\x00" * 400)
    with pytest.raises(InvalidVolumeError, match=r"junk\.nii: not a valid NIfTI header"):
        read_volume(str(tmp_path / "junk.nii"))
