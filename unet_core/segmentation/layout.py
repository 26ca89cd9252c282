"""Where a segment run keeps its outputs, and the partitioning that lets a re-run find the state of
the last one without holding it anywhere whole.

    <output>/layout.json                  partitions, buckets, fan-out depth, inputs (this file)
    <output>/series_index/part-PPPPP.parquet  ObjectRow of every object of listing partition P:
                                          the manifest a re-run joins its listing against
    <output>/volumes/part-BBBBB.parquet   VolumeRecord of every volume of bucket B: the volume table
    <output>/plan/part-BBBBB.parquet      PlannedVolume of a bucket with volumes to segment, while a
                                          run is under way (removed when its table part is written)
    <output>/records/ok|error/<volume_id>.parquet  completion records, the unit of exactly-once
    <output>/masks|slices|qc/<volume_id>.*  per-volume outputs
    <output>/summary.json

A listing unit (a prefix, or the objects directly in one) belongs to partition
crc32(unit) % partitions; a volume to bucket crc32(volume_id) % buckets. Both counts are fixed by
the first run and kept in layout.json, so every re-run routes the same unit and the same volume to
the same part file.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass

from unet_core.io import storage

LAYOUT_VERSION = 3  # 2: fragments routed to buckets by DICOM series (planning.bucket_key); 3: NIfTI ids are hashes
TARGET_UNITS = 256  # listing units wanted for parallel listing (fan-out stops at that many)
MAX_FANOUT_DEPTH = 4
MAX_PARTITIONS = 1024


@dataclass(frozen=True)
class Layout:
    inputs: tuple[str, ...]
    depth: int  # listing fan-out depth below each input
    partitions: int
    buckets: int
    version: int = LAYOUT_VERSION

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "inputs": list(self.inputs)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Layout":
        d = json.loads(text)
        return cls(inputs=tuple(d["inputs"]), depth=int(d["depth"]), partitions=int(d["partitions"]),
                   buckets=int(d["buckets"]), version=int(d.get("version", 0)))


def stable_hash(text: str) -> int:
    return zlib.crc32(text.encode())


def partition_of(unit: str, partitions: int) -> int:
    return stable_hash(unit) % partitions


def bucket_of(volume_id: str, buckets: int) -> int:
    return stable_hash(volume_id) % buckets


def layout_uri(out: str) -> str:
    return storage.join(out, "layout.json")


def index_part_uri(out: str, partition: int) -> str:
    return storage.join(out, "series_index", f"part-{partition:05d}.parquet")


def volume_part_uri(out: str, bucket: int) -> str:
    return storage.join(out, "volumes", f"part-{bucket:05d}.parquet")


def plan_part_uri(out: str, bucket: int) -> str:
    return storage.join(out, "plan", f"part-{bucket:05d}.parquet")


def record_uri(out: str, status: str, volume_id: str) -> str:
    return storage.join(out, "records", status, f"{volume_id}.parquet")


def read_layout(out: str) -> Layout | None:
    uri = layout_uri(out)
    if not storage.exists(uri):
        return None
    layout = Layout.from_json(storage.read_bytes(uri).decode())
    return layout if layout.version == LAYOUT_VERSION else None


def choose_counts(n_units: int) -> tuple[int, int]:
    """(partitions, buckets) for a first run: a partition per listing unit, up to MAX_PARTITIONS;
    as many volume-table buckets, at least 4 (so that the merge runs in parallel) and at most 256."""
    partitions = max(1, min(n_units, MAX_PARTITIONS))
    return partitions, max(4, min(256, partitions))
