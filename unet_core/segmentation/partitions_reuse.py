"""A listing partition in which nothing changed since the last run, planned from a few columns of
its series_index part: the common case of a re-run, and most of its cost at 10^5 objects.

    stored_columns(data)           -> the join's columns of a series_index part (no ObjectRow built)
    unchanged_fragments(...)       -> the partition's fragments when every listed object stands and
                                      every stored object was listed; None otherwise (then the part's
                                      rows are read whole and joined as before: planning.join_entries)

What the fragments carry is what `planning.fragments_of` gives for the same rows: no members (they
stay in the part), the fingerprint of each volume's members and the bucket of its route key. The
rule that an object's last rows stand (`stands`) and those two functions of a volume's members are
here once; planning.py uses them for rows it holds whole.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence

from unet_core.errors import ErrorType
from unet_core.io.dicom.header import ObjectKind
from unet_core.io.listing import ObjectEntry
from unet_core.segmentation.layout import bucket_of
from unet_core.segmentation.records import Format, Fragment

# Error types of a scan that say nothing about the object itself: scanned again next run.
TRANSIENT_SCAN_ERRORS = (ErrorType.STORAGE, ErrorType.INTERNAL)
# The series_index columns the join and the fragments read (ObjectRow fields, plain values).
JOIN_COLUMNS = ("uri", "object_uri", "object_size", "object_version", "text_rules", "error_type", "kind", "format",
                "series_uid", "volume_id")
_MASK = (1 << 64) - 1


def stands(entry: ObjectEntry, size: int, version: str, text_rules: str, error_types: Iterable[str],
           run_text_rules: str) -> bool:
    """Whether an object's rows of the last run stand for it now: the same object (size, version;
    a listing without a version, or a dangling link, is never the same), none of its rows an error
    that says nothing about the object, and its free-text rule results made with this run's
    patterns."""
    return (bool(entry.version) and entry.version != "dangling" and size == entry.size and version == entry.version
            and text_rules == run_text_rules and not any(e in TRANSIENT_SCAN_ERRORS for e in error_types))


def route_key(kind: str, fmt: str, series_uid: str, volume_id: str) -> str:
    """What routes a volume's fragments to a merge bucket: its DICOM series, so that every volume
    of a series (split by orientation or size) is planned together; else the volume id."""
    if kind == ObjectKind.IMAGE and fmt == Format.DICOM and series_uid:
        return "series:" + series_uid
    return volume_id


def fingerprint_of(members: Iterable[tuple[str, int, str]]) -> str:
    """Identity of a volume's inputs from its members' (uri, size, version): a sum of their hashes,
    so the fingerprints of a volume's fragments add up to the volume's. Each member counts once."""
    total = 0
    for uri, size, version in set(members):
        total += int.from_bytes(hashlib.sha256(f"{uri}\x1f{size}\x1f{version}".encode()).digest()[:8], "little")
    return f"{total & _MASK:016x}"


def stored_columns(data: bytes) -> dict[str, list] | None:
    """JOIN_COLUMNS of a series_index part, column by column; None when the part lacks one (a part
    of an older layout: its rows are read whole)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = pq.ParquetFile(pa.BufferReader(data))
    if not set(JOIN_COLUMNS) <= set(part.schema_arrow.names):
        return None
    return part.read(columns=list(JOIN_COLUMNS)).to_pydict()


def unchanged_fragments(entries: Sequence[ObjectEntry], cols: dict[str, list], run_text_rules: str, buckets: int,
                        partition: int) -> list[Fragment] | None:
    """The partition's fragments (sorted by volume id, without members, the scan counts on the
    first) when its listing is exactly the last run's objects, each unchanged; None when an object
    is new, changed, gone or listed twice."""
    rows_of: dict[str, list[int]] = defaultdict(list)  # object URI -> its rows (a zip has several)
    for i, uri in enumerate(cols["object_uri"]):
        rows_of[uri].append(i)
    if len(entries) != len(rows_of) or len({e.uri for e in entries}) != len(entries):
        return None
    size, version, texts, errors = cols["object_size"], cols["object_version"], cols["text_rules"], cols["error_type"]
    for e in entries:
        rows = rows_of.get(e.uri)
        if not rows:
            return None
        first = rows[0]
        if not stands(e, size[first], version[first], texts[first], (errors[i] for i in rows),
                      run_text_rules):
            return None
    by_volume: dict[str, list[int]] = defaultdict(list)
    for i, vid in enumerate(cols["volume_id"]):
        by_volume[vid].append(i)
    uri, kind, fmt, series = cols["uri"], cols["kind"], cols["format"], cols["series_uid"]
    frags = []
    for vid, rows in sorted(by_volume.items()):
        first = rows[0]
        frags.append(Fragment(volume_id=vid, bucket=bucket_of(route_key(kind[first], fmt[first], series[first], vid),
                                                              buckets),
                              partition=partition, members=None,
                              fingerprint=fingerprint_of((uri[i], size[i], version[i]) for i in rows)))
    if frags:
        n = len(entries)
        frags[0].listed, frags[0].reused, frags[0].scanned = n, n, 0
    return frags
