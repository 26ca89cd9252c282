"""A worker's slices and their order (unet_core/training/rows.py): a pure function of the rows'
content and (seed, epoch, rank, world), whatever files they sit in and in whatever order."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unet_core.errors import ConfigError
from unet_core.training.rows import deal, epoch_order, read_split


def _rows(n_cases: int = 3, n_slices: int = 5, size: int = 4, native: bool = False) -> list[dict]:
    rows = []
    for c in range(n_cases):
        for k in range(n_slices):
            h, w = (size + c, size + 2 * k) if native else (size, size)
            value = 10 * c + k
            row = {"case_id": f"case_{c}", "slice_index": k,
                   "image": np.full((h, w, 1), value, np.float16).tobytes(),
                   "mask": np.full((h, w), value % 2, np.uint8).tobytes(), "size": size, "channels": 1}
            if native:
                row.update(height=np.int32(h), width=np.int32(w))
            rows.append(row)
    return rows


def _write(folder, rows: list[dict], n_files: int, seed: int) -> str:
    """The rows in `n_files` Parquet files, shuffled, with random names (as Ray Data writes them)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    for f, part in enumerate(np.array_split(order, n_files)):
        table = pa.Table.from_pylist([rows[i] for i in part])
        pq.write_table(table, os.path.join(folder, f"{rng.integers(1 << 30):x}_{f:06d}-0.parquet"))
    return str(folder)


def test_a_worker_gets_the_same_rows_whatever_the_files(tmp_path):
    rows = _rows()
    a = _write(tmp_path / "a", rows, 4, seed=1)
    b = _write(tmp_path / "b", rows, 2, seed=2)
    for world in (1, 2, 3):
        seen = []
        for rank in range(world):
            ra, rb = read_split(a, rank, world, 4, 1), read_split(b, rank, world, 4, 1)
            assert ra.keys == rb.keys and ra.images == rb.images and ra.masks == rb.masks
            seen += ra.keys
            x, y = ra.decode_stacked(np.arange(len(ra)))
            assert x.shape == (len(ra), 4, 4, 1) and y.shape == (len(ra), 4, 4, 1) and x.dtype == np.float32
            c, k = ra.keys[0]
            assert x[0, 0, 0, 0] == 10 * int(c[-1]) + k  # the bytes belong to their key
        assert sorted(seen) == sorted((r["case_id"], r["slice_index"]) for r in rows)  # each row once


def test_variable_sized_rows_decode_at_their_own_size(tmp_path):
    folder = _write(tmp_path / "n", _rows(native=True), 3, seed=0)
    r = read_split(folder, 0, 1, 4, 1)
    assert r.uniform_size() is None
    images, masks = r.decode(np.arange(len(r)))
    for (c, k), image, mask in zip(r.keys, images, masks, strict=True):
        assert image.shape == (4 + int(c[-1]), 4 + 2 * k, 1) and mask.shape == image.shape[:2]
        assert image.dtype == np.float32 and mask.dtype == np.uint8


def test_the_order_is_a_function_of_seed_epoch_and_rank():
    assert np.array_equal(epoch_order(50, 3, 1, 0), epoch_order(50, 3, 1, 0))
    assert sorted(epoch_order(50, 3, 1, 0)) == list(range(50))
    others = [epoch_order(50, 4, 1, 0), epoch_order(50, 3, 2, 0), epoch_order(50, 3, 1, 1)]
    assert not any(np.array_equal(epoch_order(50, 3, 1, 0), o) for o in others)
    keys = [("b", 1), ("a", 2), ("a", 0), ("b", 0)]
    assert [keys[i] for i in deal(keys, 0, 2)] == [("a", 0), ("b", 0)]
    assert [keys[i] for i in deal(keys, 1, 2)] == [("a", 2), ("b", 1)]


def test_a_share_over_the_budget_is_refused_with_the_sizes(tmp_path):
    folder = _write(tmp_path / "s", _rows(), 2, seed=0)
    with pytest.raises(ConfigError, match="--cache-gb-per-worker"):
        read_split(folder, 0, 1, 4, 1, budget_bytes=100)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a shard")
    with pytest.raises(ConfigError, match="no Parquet shards"):
        read_split(str(tmp_path / "empty"), 0, 1, 4, 1)
