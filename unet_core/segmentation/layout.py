"""How a segment run partitions its output so that a re-run finds the state of the last one
without holding it anywhere whole (where each part lives: store.py).

A listing unit (a prefix, or the objects directly in one) belongs to partition
crc32(unit) % partitions; a volume to bucket crc32(volume_id) % buckets. Both counts are fixed by
the first run and kept in layout.json, so every re-run routes the same unit and the same volume to
the same part file.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass

# 2: fragments routed to buckets by DICOM series (planning.bucket_key); 3: NIfTI ids are hashes;
# 4: the volume table's `kind` and `rule` columns (a set-aside object was known by its "obj-" id, a
# not_selected row's rule by its message), `format` an enum; 5: nested columns instead of JSON text
# (the volume table's `selection_facts` a struct; the plan's members, record and facts a list of
# structs and structs).
LAYOUT_VERSION = 5
# Versions a re-run reuses as they are: 3 and 4 have the same partitioning and ids; their rows gain
# their kind and rule (3) and typed selection facts (3, 4) as they are read
# (records.VolumeRecord.from_stored), and their parts are rewritten as a run passes them.
READABLE_VERSIONS = (3, 4, 5)
TARGET_UNITS = 256  # listing units wanted for parallel listing (fan-out stops at that many)
MAX_FANOUT_DEPTH = 4


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
