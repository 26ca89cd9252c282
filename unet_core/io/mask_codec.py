"""Per-slice masks in Parquet: compact and lossless.

Schema of one encoded mask (columns of the per-slice table, see README "Outputs"):
    mask_height   int32   H: rows of the 2D mask (the volume's i axis for slice k)
    mask_width    int32   W: columns (the volume's j axis)
    mask_encoding string  "bitpack": binary mask, np.packbits(mask.ravel(order="C"), bitorder="little")
                          "uint8":   label map, mask.astype(uint8).ravel(order="C") bytes
    mask_data     binary  the bytes above; Parquet then compresses the column (zstd)

Decode in one call: `decode_mask(row)` with a dict (or pyarrow row) holding those four columns.
"""
from __future__ import annotations

import io
from typing import Mapping

import numpy as np
import pyarrow as pa

MASK_FIELDS = [
    pa.field("mask_height", pa.int32()),
    pa.field("mask_width", pa.int32()),
    pa.field("mask_encoding", pa.string()),
    pa.field("mask_data", pa.binary()),
]


def encode_mask(mask: np.ndarray) -> dict:
    """(H, W) integer mask -> the four columns. Binary masks (values in {0, 1}) are bit-packed."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"mask values must be labels in 0..255, got {mask.min()}..{mask.max()}")
    h, w = mask.shape
    if mask.size == 0 or mask.max() <= 1:
        data = np.packbits(mask.astype(np.uint8).ravel(), bitorder="little").tobytes()
        return {"mask_height": h, "mask_width": w, "mask_encoding": "bitpack", "mask_data": data}
    return {"mask_height": h, "mask_width": w, "mask_encoding": "uint8",
            "mask_data": np.ascontiguousarray(mask, dtype=np.uint8).tobytes()}


def decode_mask(row: Mapping) -> np.ndarray:
    """The four columns -> (H, W) uint8 mask."""
    h, w, enc, data = (row["mask_height"], row["mask_width"], row["mask_encoding"], row["mask_data"])
    buf = np.frombuffer(data, dtype=np.uint8)
    if enc == "bitpack":
        return np.unpackbits(buf, count=h * w, bitorder="little").reshape(h, w)
    if enc == "uint8":
        return buf.reshape(h, w).copy()
    raise ValueError(f"unknown mask encoding {enc!r}")


def slices_table_bytes(volume_id: str, labels: np.ndarray) -> bytes:
    """The per-slice Parquet table of a (i, j, k) label volume: one row per slice k with
    `volume_id`, `slice_index` and the four mask columns, zstd-compressed."""

    import pyarrow.parquet as pq

    rows = [{"volume_id": volume_id, "slice_index": k, **encode_mask(labels[:, :, k])} for k in range(labels.shape[2])]
    schema = pa.schema([pa.field("volume_id", pa.string()), pa.field("slice_index", pa.int32()), *MASK_FIELDS])
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf, compression="zstd")
    return buf.getvalue()
