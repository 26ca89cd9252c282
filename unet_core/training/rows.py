"""A training worker's slices, and their order: a pure function of the prepared data's content and
(seed, epoch, rank, world), never of timing.

    read_split(...)     the rows of one split dealt to one worker, in content order
    WorkerRows          those rows, still encoded as in the shards (float16 / uint8 bytes)
    epoch_order(...)    the order a worker visits its rows in one epoch

Why not Ray Data's streaming split: which worker gets which block, and in which order blocks arrive,
depend on timing, and a local shuffle buffer fed in arrival order turns that into a different data
order on a busy machine (a seeded run's held-out Dice moved by 0.03 that way, issue #30). Here every
worker lists the split's Parquet files, sorts all rows by (case_id, slice_index), and keeps the
rows at positions rank, rank + world, ... of that order; each epoch it permutes them with a
generator seeded by (seed, epoch, rank).

Rows hold `height` and `width` (int32) when `unet prepare` wrote them (the native recipe's slices
keep their own grid); shards without them hold size x size slices.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unet_core.errors import ConfigError
from unet_core.io import storage

KEY_COLUMNS = ("case_id", "slice_index")


@dataclass(frozen=True)
class WorkerRows:
    """One worker's rows in content order. images[i]: float16 bytes of (heights[i], widths[i],
    channels); masks[i]: uint8 bytes of (heights[i], widths[i])."""

    keys: list[tuple[str, int]]
    images: list[bytes]
    masks: list[bytes]
    heights: np.ndarray  # (n,) int32
    widths: np.ndarray  # (n,) int32
    channels: int

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.images) + sum(len(b) for b in self.masks)

    def uniform_size(self) -> int | None:
        """The common side of square slices (the seed recipe), None when sizes vary."""
        if len(self) and (self.heights == self.heights[0]).all() and (self.widths == self.heights[0]).all():
            return int(self.heights[0])
        return None

    def decode(self, index: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Rows `index` -> images [(h, w, C) float32] and masks [(h, w) uint8], each at its own size."""
        images, masks = [], []
        for i in index:
            h, w = int(self.heights[i]), int(self.widths[i])
            images.append(np.frombuffer(self.images[i], np.float16).reshape(h, w, self.channels).astype(np.float32))
            masks.append(np.frombuffer(self.masks[i], np.uint8).reshape(h, w))
        return images, masks

    def decode_stacked(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows `index` of equal size s -> (images (B, s, s, C) float32, masks (B, s, s, 1) float32),
        what `shards.decode_rows` gives for the same bytes."""
        images, masks = self.decode(index)
        return np.stack(images), np.stack(masks)[..., None].astype(np.float32)


def epoch_order(n: int, seed: int, epoch: int, rank: int) -> np.ndarray:
    """The permutation of a worker's n rows for one epoch: a function of its arguments only."""
    return np.random.default_rng([seed, epoch, rank]).permutation(n)


def deal(keys: list[tuple[str, int]], rank: int, world: int) -> np.ndarray:
    """Indexes into `keys` of the rows worker `rank` of `world` keeps: every world-th row of the
    (case_id, slice_index) order, starting at rank, listed in that order."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside a world of {world}")
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return np.asarray(order[rank::world], np.int64)


def read_split(folder: str, rank: int, world: int, size: int, channels: int,
               budget_bytes: int = 0) -> WorkerRows:
    """The rows of one split folder (`<prepared>/slices/split=train`, local or s3://) that worker
    `rank` of `world` trains on. `size` is the side of slices in shards without height / width
    columns. `budget_bytes` > 0 refuses a worker's share above it (the rows stay in memory)."""
    import pyarrow.parquet as pq

    uris = sorted(e.uri for e in storage.list_files(folder) if e.uri.endswith(".parquet"))
    if not uris:
        raise ConfigError(f"{folder}: no Parquet shards; run `unet prepare` first (or it did not finish)")
    # The key columns first (small: Parquet reads only their column chunks), then the bytes of
    # this worker's rows, one file at a time. ParquetFile, not pq.read_table: pyarrow 26's
    # dataset reader leaves a thread that aborts the process at exit.
    keys: list[tuple[str, int]] = []
    where: list[tuple[int, int]] = []
    for f, uri in enumerate(uris):
        with storage.open_random_access(uri) as fh:
            t = pq.ParquetFile(fh).read(columns=list(KEY_COLUMNS))
        for r, key in enumerate(zip(t.column("case_id").to_pylist(), t.column("slice_index").to_pylist(), strict=True)):
            keys.append((str(key[0]), int(key[1])))
            where.append((f, r))
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{folder}: a (case_id, slice_index) occurs twice; prepare the data again")
    mine = deal(keys, rank, world)
    by_file: dict[int, list[tuple[int, int]]] = {}
    for position, i in enumerate(mine):
        f, r = where[i]
        by_file.setdefault(f, []).append((position, r))

    n = len(mine)
    images: list[bytes] = [b""] * n
    masks: list[bytes] = [b""] * n
    heights = np.full(n, size, np.int32)
    widths = np.full(n, size, np.int32)
    used = 0
    for f, wanted in sorted(by_file.items()):
        with storage.open_random_access(uris[f]) as fh:
            pf = pq.ParquetFile(fh)
            has_shape = {"height", "width"} <= set(pf.schema_arrow.names)
            t = pf.read(columns=["image", "mask", *(["height", "width"] if has_shape else [])])
        img, msk = t.column("image"), t.column("mask")
        hs = t.column("height").to_numpy() if has_shape else None
        ws = t.column("width").to_numpy() if has_shape else None
        for position, r in wanted:
            images[position], masks[position] = img[r].as_py(), msk[r].as_py()
            if has_shape:
                heights[position], widths[position] = hs[r], ws[r]
            used += len(images[position]) + len(masks[position])
        if budget_bytes and used > budget_bytes:
            raise ConfigError(f"{folder}: worker {rank}'s share of the slices is over {used / 1024**3:.2f} GiB, more "
                              f"than --cache-gb-per-worker {budget_bytes / 1024**3:g}; raise it or add workers")
    for position, i in enumerate(mine):
        h, w = int(heights[position]), int(widths[position])
        if len(images[position]) != h * w * channels * 2 or len(masks[position]) != h * w:
            raise ConfigError(f"{folder}: slice {keys[i][1]} of case {keys[i][0]} holds "
                              f"{len(images[position])} image bytes for {h} x {w} x {channels} float16")
    return WorkerRows([keys[i] for i in mine], images, masks, heights, widths, channels)
