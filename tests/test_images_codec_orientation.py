from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from unet_core.errors import EmptyFileError, UnreadableFileError
from unet_core.io.images2d import mask_from_image, pair_by_case, read_image2d
from unet_core.io.mask_codec import MASK_FIELDS, decode_mask, encode_mask
from unet_core.io.orientation import axis_codes, from_canonical, to_canonical


def _png(arr, mode=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_8_and_16_bit_images():
    a8 = np.array([[0, 128, 255]], np.uint8)
    px, bits = read_image2d(_png(a8), "a.png")
    assert bits == 8 and px.tolist() == [[0, 128, 255]]
    np.testing.assert_array_equal(mask_from_image(px, bits), [[0, 1, 1]])
    a16 = np.array([[0, 40000, 65535]], np.uint16)
    buf = io.BytesIO()
    Image.fromarray(a16).save(buf, format="TIFF")
    px, bits = read_image2d(buf.getvalue(), "a.tif")
    assert bits == 16 and px.tolist() == [[0, 40000, 65535]]
    np.testing.assert_array_equal(mask_from_image(px, bits), [[0, 1, 1]])
    np.testing.assert_array_equal(mask_from_image(np.array([[0, 2, 3]], np.uint8), 8, labels=True), [[0, 2, 3]])


def test_bad_images():
    with pytest.raises(EmptyFileError, match="x.png: empty"):
        read_image2d(b"", "x.png")
    with pytest.raises(UnreadableFileError, match="x.png: not a readable PNG/TIFF image"):
        read_image2d(b"not an image at all", "x.png")


def test_pairing_by_case_reports_the_rest():
    images = ["d/image/0.png", "d/image/1.png", "d/image/7.png", "d/image/2.png"]
    masks = ["d/label/2.png", "d/label/0.png", "d/label/1_mask.png", "d/label/9.png"]
    p = pair_by_case(images, masks)
    assert p.pairs == {"0": ("d/image/0.png", "d/label/0.png"), "1": ("d/image/1.png", "d/label/1_mask.png"),
                       "2": ("d/image/2.png", "d/label/2.png")}
    assert p.unpaired_images == ["d/image/7.png"] and p.unpaired_masks == ["d/label/9.png"]


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (256, 256), (512, 317)])
def test_mask_codec_roundtrip_through_parquet(shape):
    rng = np.random.default_rng(sum(shape))
    masks = [(rng.random(shape) > 0.7).astype(np.uint8), rng.integers(0, 6, shape).astype(np.uint8),
             np.zeros(shape, np.uint8)]
    rows = [encode_mask(m) for m in masks]
    assert [r["mask_encoding"] for r in rows][0] == "bitpack"
    table = pa.Table.from_pylist(rows, schema=pa.schema(MASK_FIELDS))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    back = pq.read_table(io.BytesIO(buf.getvalue())).to_pylist()
    for m, row in zip(masks, back, strict=True):
        np.testing.assert_array_equal(decode_mask(row), m)
    if shape == (256, 256):
        assert len(rows[0]["mask_data"]) == 256 * 256 // 8


def test_mask_codec_rejects_bad_values():
    with pytest.raises(ValueError, match="2D mask"):
        encode_mask(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="labels in 0..255"):
        encode_mask(np.array([[300]]))


@pytest.mark.parametrize("perm", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
@pytest.mark.parametrize("flips", [(1, 1, 1), (-1, 1, -1), (-1, -1, -1)])
def test_canonical_roundtrip(perm, flips):
    affine = np.eye(4)
    affine[:3, :3] = np.eye(3)[:, perm] * np.array(flips)[None, :] * [[1.0], [2.0], [3.0]]
    vox = np.random.default_rng(0).random((4, 5, 6))
    can, can_affine = to_canonical(vox, affine)
    assert axis_codes(can_affine) == "RAS"
    # The same world point holds the same value on both grids.
    ijk = np.array([1, 2, 3])
    world = affine[:3, :3] @ ijk + affine[:3, 3]
    cijk = np.round(np.linalg.solve(can_affine[:3, :3], world - can_affine[:3, 3])).astype(int)
    assert can[tuple(cijk)] == vox[tuple(ijk)]
    np.testing.assert_array_equal(from_canonical(can, affine, vox.shape), vox)


@pytest.mark.parametrize("perm", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_canonical_grid_matches_to_canonical(perm):
    from unet_core.io.orientation import canonical_grid

    affine = np.eye(4)
    affine[:3, :3] = np.eye(3)[:, perm] * np.array([-1.0, 1.0, -2.0])
    affine[:3, 3] = [5, -3, 7]
    vox = np.zeros((4, 5, 6))
    can, can_affine = to_canonical(vox, affine)
    shape, aff = canonical_grid(affine, vox.shape)
    assert shape == can.shape
    np.testing.assert_allclose(aff, can_affine)


def test_slices_table_roundtrip():
    from unet_core.io.mask_codec import slices_table_bytes

    labels = (np.random.default_rng(3).random((9, 7, 5)) > 0.5).astype(np.uint8)
    rows = pq.read_table(io.BytesIO(slices_table_bytes("vol-1", labels))).to_pylist()
    assert [r["slice_index"] for r in rows] == list(range(5)) and {r["volume_id"] for r in rows} == {"vol-1"}
    np.testing.assert_array_equal(np.stack([decode_mask(r) for r in rows], axis=-1), labels)


def test_display_slice_is_radiological():
    from unet_core.plots import display_slice

    plane = np.zeros((5, 4))  # canonical [i (towards patient's right), j (towards anterior)]
    plane[4, 3] = 1  # right-anterior corner
    shown = display_slice(plane)
    assert shown.shape == (4, 5) and shown[0, 0] == 1  # top (anterior), viewer's left (patient's right)


def test_an_image_over_the_pixel_budget_is_refused_before_it_is_decoded():
    from PIL import Image

    from unet_core.errors import ResourceLimitError
    from unet_core.io.images2d import read_image2d

    buf = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buf, format="PNG")  # 16 megapixels in a few KiB
    assert len(buf.getvalue()) < 100_000
    with pytest.raises(ResourceLimitError, match="budget of 1000000"):
        read_image2d(buf.getvalue(), "big.png", max_pixels=1_000_000)
    pixels, bits = read_image2d(buf.getvalue(), "big.png", max_pixels=20_000_000)
    assert pixels.shape == (4000, 4000) and bits == 8
