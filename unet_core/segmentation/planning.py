"""Planning a segment run without holding the archive anywhere whole.

    fan_out(inputs)            -> listing units (prefixes), expanded one level at a time
    scan_partition(units, ...) -> ObjectRow of every object of one listing partition: the previous
                                  run's row where the object is unchanged, a header scan where not
    fragments_of(rows)         -> the partition's pieces of volumes, keyed by volume id
    merge_bucket(fragments)    -> PlannedVolume per volume of one bucket: segment, carry, set aside

A series split across listing partitions (a flat or hashed layout) arrives as several fragments of
one volume id; `merge_bucket` sees all of them, because the bucket is a function of the volume id.
The change rule: a volume is segmented again when its fingerprint (the URIs, sizes and versions of
its members) or the model differs from its last ok row; otherwise that row is carried over.
"""
from __future__ import annotations

import functools
import os
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator

from unet_core.config import Limits
from unet_core.errors import ITEM_ERRORS, ErrorType, ItemFailure, NotFoundError
from unet_core.io import dicomweb, listing, storage
from unet_core.io.dicom.grouping import (
    VolumeMembers,
    group_series,
    split_off_localizers,
    volume_budget_problem,
    volume_id_of,
    volume_key,
)
from unet_core.io.dicom.pixels import same_pixels
from unet_core.io.nifti import nifti_volume_id
from unet_core.io.volumes import read_object
from unet_core.ownership import OutputNames
from unet_core.segmentation import choosing, partitions_reuse, selection
from unet_core.segmentation.layout import MAX_FANOUT_DEPTH, TARGET_UNITS, bucket_of
from unet_core.segmentation.partitions_reuse import fingerprint_of, route_key
from unet_core.segmentation.records import (
    SET_ASIDE_PREFIX,
    Action,
    Format,
    Fragment,
    ObjectKind,
    ObjectRow,
    PlannedVolume,
    RowKind,
    Status,
    VolumeRecord,
)
from unet_core.segmentation.scanning import scan_dicomweb, scan_object
from unet_core.segmentation.selection import SelectionRules
from unet_core.segmentation.settings import SegmentSettings
from unet_core.segmentation.store import index_rows
from unet_core.volume import short_hash


@dataclass(frozen=True)
class Unit:
    """A listing unit: every object below `prefix` (recursive) or directly in it."""

    prefix: str
    recursive: bool

    @property
    def key(self) -> str:
        return ("R " if self.recursive else "L ") + self.prefix


def fan_out(inputs: list[str], depth: int | None = None, follow_symlinks: bool = False) -> tuple[list[Unit], int]:
    """Expand the inputs level by level into listing units: until there are TARGET_UNITS of them
    (or MAX_FANOUT_DEPTH levels) on a first run, to exactly `depth` levels on a re-run, so that a
    re-run finds the same units. A folder larger than one listing page is not expanded (listing it
    would mean listing all of it here): it becomes one unit. Returns (units, depth reached)."""
    roots = listing.real_roots(inputs)
    units: list[Unit] = []
    current, level = [p if storage.is_remote(p) or not os.path.isdir(storage.resolve(p)[1]) else p.rstrip("/") + "/"
                      for p in inputs], 0
    # Local folders by (device, inode): a linked folder is expanded once. One stat each, where a
    # real path costs a stat per component (4,000 series folders: 4,000 of them on the driver).
    seen: set[tuple[int, int]] = set()

    def first_time(prefix: str) -> bool:
        if storage.is_remote(prefix):
            return True
        try:
            st = os.stat(storage.resolve(prefix)[1])
        except OSError:
            return True  # gone or unreadable: its listing says so
        if (st.st_dev, st.st_ino) in seen:
            return False
        seen.add((st.st_dev, st.st_ino))
        return True

    current = [p for p in current if first_time(p)]
    while current:
        stop = level == depth if depth is not None else (len(units) + len(current) >= TARGET_UNITS or level == MAX_FANOUT_DEPTH)
        if stop:
            units += [Unit(p, True) for p in current]
            break
        nxt: list[str] = []
        for prefix in current:
            lv = listing.list_level(prefix, follow_symlinks, roots=roots)
            if lv.is_object:
                units.append(Unit(prefix, False))
            elif not lv.complete:
                units.append(Unit(prefix, True))
            else:
                if lv.has_objects:
                    units.append(Unit(prefix, False))
                nxt += [d for d in lv.dirs if first_time(d)]
        current, level = nxt, level + 1
    return units, level if depth is None else depth


def assign_volume(row: ObjectRow) -> ObjectRow:
    """The volume an object's header places it in: a DICOM image by series key, a NIfTI file by
    itself; an object set aside is a row of its own ("obj-...")."""
    if row.kind != ObjectKind.IMAGE:
        vid = SET_ASIDE_PREFIX + short_hash(row.uri)
    elif row.format == Format.NIFTI:
        vid = nifti_volume_id(row.uri)
    else:
        vid = volume_id_of(volume_key(row))
    return replace(row, volume_id=vid)


@dataclass
class ScanCounts:
    listed: int = 0  # stored objects listed
    reused: int = 0  # their rows taken from the last run (unchanged)
    scanned: int = 0  # headers read now (each member of a zip is one)


def _unchanged(previous: list[ObjectRow], entry: listing.ObjectEntry, text_rules: str = "") -> bool:
    """The last run's rows of an object stand (partitions_reuse.stands)."""
    p = previous[0]
    return partitions_reuse.stands(entry, p.object_size, p.object_version, p.text_rules,
                                   (r.error_type for r in previous), text_rules)


def scan_partition(units: Iterable[Unit], previous: Iterable[ObjectRow], limits: Limits, follow_symlinks: bool,
                   roots: tuple[str, ...], output: OutputNames | None = None, rules: SelectionRules | None = None
                   ) -> tuple[list[ObjectRow], ScanCounts, set[str]]:
    """Every object of a listing partition as ObjectRows with their volume ids, and the URIs of
    the objects whose rows were reused. An object whose URI, size and version equal the last run's
    keeps that run's rows (no read); the others are scanned. Objects the output owns (an output
    inside an input) are not listed."""
    return join_entries(_listed(units, follow_symlinks, roots, output), previous, limits, rules)


def _listed(units: Iterable[Unit], follow_symlinks: bool, roots: tuple[str, ...],
            output: OutputNames | None) -> Iterator[listing.ObjectEntry]:
    for entry in _entries(units, follow_symlinks, roots):
        if output is None or not output.excludes(entry.uri):
            yield entry


def join_entries(entries: Iterable[listing.ObjectEntry], previous: Iterable[ObjectRow], limits: Limits,
                 rules: SelectionRules | None = None) -> tuple[list[ObjectRow], ScanCounts, set[str]]:
    """The listed objects (the output's own left out) joined with the last run's rows of their
    partition: `scan_partition` after its listing."""
    rules = rules or SelectionRules()
    before: dict[str, list[ObjectRow]] = defaultdict(list)
    for r in previous:
        before[r.object_uri].append(r)
    rows: list[ObjectRow] = []
    counts, reused = ScanCounts(), set()
    series: list[listing.ObjectEntry] = []  # new DICOMweb instances of one series: one metadata request

    def scanned(new: list[ObjectRow]) -> None:
        rows.extend(assign_volume(r) for r in new)
        counts.scanned += len(new)

    for entry in entries:
        counts.listed += 1
        old = before.get(entry.uri)
        if old and _unchanged(old, entry, rules.text_digest()):
            rows += old
            counts.reused += 1
            reused.add(entry.uri)
        elif dicomweb.is_dicomweb(entry.uri):
            if series and _series_of(series[0].uri) != _series_of(entry.uri):
                scanned(scan_dicomweb(series, rules))
                series = []
            series.append(entry)
        else:
            scanned(scan_object(entry, limits, rules))
    if series:
        scanned(scan_dicomweb(series, rules))
    return rows, counts, reused


def _series_of(uri: str) -> str:
    return uri.rsplit("/instances/", 1)[0]


def index_partition(partition: int, units: list[Unit], s: SegmentSettings,
                    roots: tuple[str, ...]) -> tuple[list[Fragment], ScanCounts]:
    """One listing partition of a run: joined with its series_index part of the last run, scanned
    where needed, its part rewritten when anything changed; returns its volume fragments. A
    partition in which nothing changed reads only the join's columns of its part
    (partitions_reuse.py); its rows are read only when an object is new, changed or gone."""
    store = s.store()
    stored = store.read_index_bytes(partition)
    entries = _partition_entries(units, s, roots)
    frags = _partition_unchanged(partition, entries, stored, s)
    if frags is not None:
        return frags, ScanCounts(listed=len(entries), reused=len(entries))
    previous = index_rows(stored) if stored is not None else []
    rows, counts, reused = join_entries(entries, previous, s.limits, s.rules)
    if counts.scanned or len(rows) != len(previous):
        if rows:
            store.write_index(partition, rows)
        elif previous:
            store.delete_index(partition)
    frags = fragments_of(rows, s.buckets, partition, reused)
    if frags:
        frags[0] = replace(frags[0], listed=counts.listed, reused=counts.reused, scanned=counts.scanned)
    return frags, counts


def reuse_partition(partition: int, units: list[Unit], s: SegmentSettings,
                    roots: tuple[str, ...]) -> list[Fragment] | None:
    """One listing partition of a re-run when nothing in it changed: index_partition's fast path
    alone (nothing written, no header read). None when an object is new, changed or gone, or the
    part is of an older layout: then index_partition does the whole work."""
    return _partition_unchanged(partition, _partition_entries(units, s, roots), s.store().read_index_bytes(partition), s)


def _partition_entries(units: list[Unit], s: SegmentSettings, roots: tuple[str, ...]) -> list[listing.ObjectEntry]:
    return list(_listed(units, s.follow_symlinks, roots, _output_names(s.output, tuple(s.inputs), s.run_id)))


def _partition_unchanged(partition: int, entries: list[listing.ObjectEntry], stored: bytes | None,
                         s: SegmentSettings) -> list[Fragment] | None:
    """The partition's fragments when its listing is exactly the last run's objects, unchanged
    (partitions_reuse.py); [] for a partition with neither objects nor a part."""
    if stored is None:
        return None if entries else []
    cols = partitions_reuse.stored_columns(stored)
    if cols is None:
        return None
    return partitions_reuse.unchanged_fragments(entries, cols, s.rules.text_digest(), s.buckets, partition)


def _entries(units: Iterable[Unit], follow_symlinks: bool, roots: tuple[str, ...]) -> Iterator[listing.ObjectEntry]:
    for unit in units:
        try:
            yield from listing.iter_objects(unit.prefix, unit.recursive, follow_symlinks, roots)
        except NotFoundError:
            if unit.recursive:  # a folder removed since the fan-out listed it
                continue
            raise


@functools.lru_cache(maxsize=8)
def _output_names(output: str, inputs: tuple[str, ...], run_id: str) -> OutputNames:
    """The output as the inputs' listings spell it: resolved once per process and run (`run_id`
    in the key: a worker that serves a later run resolves again), not once per partition."""
    return OutputNames.of(output, inputs)


def bucket_key(row: ObjectRow) -> str:
    """What routes a volume's fragments to a merge bucket (partitions_reuse.route_key)."""
    return route_key(row.kind, row.format, row.series_uid, row.volume_id)


def fragments_of(rows: list[ObjectRow], buckets: int, partition: int = 0,
                 reused: set[str] | frozenset = frozenset()) -> list[Fragment]:
    """The partition's pieces of volumes. A piece whose members were all reused from the last run
    travels without them (its fingerprint says whether the volume changed)."""
    by_volume: dict[str, list[ObjectRow]] = defaultdict(list)
    for r in rows:
        by_volume[r.volume_id].append(r)
    return [Fragment(volume_id=vid, bucket=bucket_of(bucket_key(members[0]), buckets), partition=partition,
                     fingerprint=fingerprint(members),
                     members=None if all(m.object_uri in reused for m in members) else tuple(members))
            for vid, members in sorted(by_volume.items())]


# ---- merging and the change rule -----------------------------------------------------------------
_MASK = (1 << 64) - 1


def fingerprint(members: Iterable[ObjectRow]) -> str:
    """Identity of a volume's inputs: its members' URIs, sizes and versions
    (partitions_reuse.fingerprint_of)."""
    return fingerprint_of((m.uri, m.object_size, m.object_version) for m in members)


def combine(fingerprints: Iterable[str]) -> str:
    return f"{sum(int(f, 16) for f in fingerprints) & _MASK:016x}"


def set_aside_record(row: ObjectRow, s: SegmentSettings) -> VolumeRecord:
    vid = row.volume_id if row.volume_id.startswith(SET_ASIDE_PREFIX) else SET_ASIDE_PREFIX + short_hash(row.uri)
    return VolumeRecord(volume_id=vid, kind=RowKind.SET_ASIDE, source=row.uri, format=row.format,
                        series_uid=row.series_uid,
                        status=Status.SKIPPED if row.kind == ObjectKind.NON_IMAGE else Status.ERROR,
                        error=row.reason, error_type=row.error_type, fingerprint=fingerprint([row]), n_objects=1,
                        model=s.model_name, model_identity=s.model_identity)


def _set_aside(row: ObjectRow, s: SegmentSettings, bucket: int) -> PlannedVolume:
    rec = set_aside_record(row, s)
    return PlannedVolume(volume_id=rec.volume_id, bucket=bucket, action=Action.SET_ASIDE,
                         fingerprint=rec.fingerprint, format=row.format, source=row.uri, series_uid=row.series_uid,
                         record=rec, kind=RowKind.SET_ASIDE)


def _common_prefix(uris: list[str]) -> str:
    if len(uris) == 1:
        return uris[0]
    prefix = os.path.commonprefix(uris)
    prefix = prefix[: prefix.rfind("/") + 1] if "/" in prefix else prefix
    # A DICOMweb series' instances: the series' own URI (a WADO-RS resource) names them.
    return prefix[: -len("/instances/")] if dicomweb.is_dicomweb(prefix) and prefix.endswith("/instances/") else prefix


def carries(prev: VolumeRecord | None, fingerprint: str, s: SegmentSettings) -> bool:
    """The change rule: a volume's last row is carried over, unread, when its inputs (fingerprint)
    are the same and, for a volume, it was ok with the same model and has every output this run
    asks for. An object set aside is carried when its inputs are the same."""
    if prev is None or prev.fingerprint != fingerprint:
        return False
    if prev.kind == RowKind.SET_ASIDE:
        return True
    return prev.status == Status.OK and prev.model_identity == s.model_identity and s.made_as_asked(prev)


def _carry(prev: VolumeRecord, bucket: int, facts: selection.VolumeFacts | None = None,
           text_rules: str = "") -> PlannedVolume:
    """The last run's row, as it is; with `facts`, those (made now from the members) replace its own."""
    if facts is not None:
        prev = replace(prev, selection_facts=facts, text_rules=text_rules)
    return PlannedVolume(volume_id=prev.volume_id, bucket=bucket, action=Action.CARRY,
                         fingerprint=prev.fingerprint, format=prev.format, source=prev.source,
                         series_uid=prev.series_uid, record=prev, facts=prev.selection_facts, kind=prev.kind)


def _plan(members: VolumeMembers, fmt: Format, source: str, previous: dict[str, VolumeRecord], s: SegmentSettings,
          bucket: int) -> PlannedVolume:
    fp = fingerprint(members.headers)
    prev = previous.get(members.volume_id)
    facts = choosing.facts_of(members, fmt)
    if carries(prev, fp, s) and prev is not None and prev.kind == RowKind.VOLUME:
        return _carry(prev, bucket, facts, s.rules.text_digest())
    return PlannedVolume(volume_id=members.volume_id, bucket=bucket, action=Action.SEGMENT, fingerprint=fp,
                         format=fmt, source=source, series_uid=members.series_uid, members=tuple(members.headers),
                         facts=facts)


MemberLoader = Callable[[int, str], list[ObjectRow]]  # (partition, volume id) -> its rows there


def merge_bucket(fragments: Iterable[Fragment], previous: dict[str, VolumeRecord], s: SegmentSettings,
                 load_members: MemberLoader | None = None) -> list[PlannedVolume]:
    """The fragments of one bucket's volumes, merged, deduplicated and planned. `previous` maps a
    volume id to its row in the last run's volume table (same bucket). A volume whose fragments
    all came without members and whose fingerprint and model equal its last ok row (or, for an
    object set aside, its last row) is carried over unread; otherwise the members left out are
    fetched with `load_members` (from the partitions' series_index parts)."""
    by_volume: dict[str, list[Fragment]] = defaultdict(list)
    for f in fragments:
        by_volume[f.volume_id].append(f)
    out: list[PlannedVolume] = []
    # The most slices of any volume of each DICOM series (every volume of a series is in this
    # bucket: fragments are routed by series, `bucket_key`), for the split-off localizer rule.
    largest: dict[str, int] = defaultdict(int)
    todo: list[tuple[str, list[ObjectRow]]] = []
    selecting = s.selecting
    for vid, frags in sorted(by_volume.items()):
        prev = previous.get(vid)
        unread = all(f.members is None for f in frags)
        fp = combine(f.fingerprint for f in frags) if unread else ""
        stored = choosing.stored_facts(prev, s) if unread and selecting else None
        # Carried unread: an ok row (selection is decided again from its stored facts), or a row
        # the rules still leave out; a volume that may now be selected has its members loaded.
        if (unread and carries(prev, fp, s) and (not selecting or stored is not None)) or (
                stored is not None and choosing.was_not_selected(prev, fp) and selection.verdict(s.rules, stored)):
            out.append(_carry(prev, frags[0].bucket))
            if prev is not None and prev.format == Format.DICOM and prev.series_uid:
                largest[prev.series_uid] = max(largest[prev.series_uid], prev.n_objects or 0)
            continue
        members: list[ObjectRow] = []
        for f in frags:
            if f.members is not None:
                members += f.members
            elif load_members is not None:
                members += load_members(f.partition, vid)
            else:
                raise ValueError(f"{vid}: a fragment without members and no way to load them")
        todo.append((vid, members))
        if members[0].kind == ObjectKind.IMAGE and members[0].format == Format.DICOM:
            n = len({m.uri for m in members})
            largest[members[0].series_uid] = max(largest[members[0].series_uid], n)
    for vid, members in todo:
        bucket = by_volume[vid][0].bucket  # every row goes to the table part of the bucket it was merged in
        try:
            out += _plan_volume(vid, members, previous, largest, s, bucket)
        except Exception as exc:  # noqa: BLE001 - the planning stage's guard: one volume, not the bucket
            failure = ItemFailure.of(vid, exc, "planning")
            out += [_set_aside(replace(m, kind=ObjectKind.ERROR, error_type=failure.error_type,
                                       reason=f"{m.uri}: {failure.error}"), s, bucket)
                    for m in {m.uri: m for m in members}.values()]
    return choosing.select(out, s) if selecting else out


def _plan_volume(vid: str, members: list[ObjectRow], previous: dict[str, VolumeRecord], largest: dict[str, int],
                 s: SegmentSettings, bucket: int) -> list[PlannedVolume]:
    """One volume id's members -> its planned volume(s) and the objects set aside from it."""
    first = members[0]
    if first.kind != ObjectKind.IMAGE:
        return [_set_aside(m, s, bucket) for m in members]
    if first.format == Format.NIFTI:
        return [_plan(VolumeMembers(vid, "", members[:1]), Format.NIFTI, first.uri, previous, s, bucket)] + [
            _set_aside(replace(m, kind=ObjectKind.NON_IMAGE, error_type=ErrorType.DUPLICATE_INSTANCE,
                               reason=f"{m.uri}: listed twice"), s, bucket) for m in members[1:]]
    groups, aside = group_series(list({m.uri: m for m in members}.values()), skip_localizers=not s.keep_localizers,
                                 same=_same_content(s.limits))
    if not s.keep_localizers:
        groups, split_off = split_off_localizers(groups, largest)
        aside += split_off
    out = [_set_aside(replace(h, volume_id=""), s, bucket) for h in aside]
    for g in groups:
        g = replace(g, volume_id=vid)  # the volume id this bucket routed it by
        planned = _plan(g, Format.DICOM, _common_prefix(g.uris), previous, s, bucket)
        if g.conflict:  # copies of an instance with different pixels: the volume cannot be built
            planned = _volume_error(planned, g, s, ErrorType.CONFLICTING_INSTANCES, g.conflict)
        elif problem := volume_budget_problem(g, s.limits):  # checked before any pixel is fetched
            planned = _volume_error(planned, g, s, ErrorType.RESOURCE_LIMIT, f"{planned.source}: {problem}")
        out.append(planned)
    return out


def _same_content(limits: Limits):
    """`grouping.SameContent` over stored objects: both copies read and their pixels compared
    (copies of one instance are rare; None when either cannot be read)."""
    def same(a: ObjectRow, b: ObjectRow) -> bool | None:
        try:
            return same_pixels(read_object(a.uri, limits), read_object(b.uri, limits), a.uri, b.uri)
        except ITEM_ERRORS:
            return None

    return same


def _volume_error(p: PlannedVolume, g: VolumeMembers, s: SegmentSettings, error_type: ErrorType,
                  message: str) -> PlannedVolume:
    """A volume that planning already knows cannot be segmented: its error row, nothing read. It
    keeps its members (the objects it stands for)."""
    rec = VolumeRecord(
        volume_id=p.volume_id, source=p.source, format=p.format, series_uid=p.series_uid, status=Status.ERROR,
        error=message, error_type=error_type, fingerprint=p.fingerprint,
        n_objects=len(g.headers), model=s.model_name, model_identity=s.model_identity)
    return replace(p, action=Action.SET_ASIDE, members=tuple(g.headers), record=rec)
