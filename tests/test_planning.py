"""Planning a segment run without Ray: listing and its rules, the manifest join, merging fragments
across listing partitions, the change rule, and the typed rows."""
from __future__ import annotations

import os
import time
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest

from tests.support.segment_run import segment_settings
from unet_core.io import listing, storage
from unet_core.ownership import OutputNames
from unet_core.segmentation import planning, scanning
from unet_core.segmentation.layout import Layout, bucket_of, partition_of
from unet_core.segmentation.records import (
    Action,
    Format,
    Fragment,
    ObjectKind,
    ObjectRow,
    PlannedVolume,
    RowKind,
    Status,
    VolumeRecord,
    rows_from_bytes,
    table_bytes,
)
from unet_core.segmentation.selection import VolumeFacts
from unet_core.synthetic import Phantom, SeriesSpec, dicom_series

LIMITS = segment_settings().limits
_settings = segment_settings


def _series(root, name: str, n: int = 6, seed: int = 0) -> list[str]:
    paths = []
    for fname, data in dicom_series(Phantom.random(seed), SeriesSpec(rows=16, columns=16, n_slices=n), seed=seed)[0]:
        p = root / name / fname
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        paths.append(str(p))
    return paths


class Reads:
    """Counts the reads that go through the storage layer (the calls still run)."""

    def __init__(self, monkeypatch):
        self.uris: list[str] = []
        for name in ("read_bytes", "read_range"):
            real = getattr(storage, name)

            def counted(uri, *a, _real=real, **kw):
                self.uris.append(uri)
                return _real(uri, *a, **kw)

            monkeypatch.setattr(storage, name, counted)


# ---- listing ------------------------------------------------------------------------------------
def test_hidden_names_are_skipped_and_versions_given(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.dcm").write_bytes(b"1")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"2")
    (tmp_path / ".snapshot").mkdir()
    (tmp_path / ".snapshot" / "y.dcm").write_bytes(b"3")
    (tmp_path / "a" / ".tmp-abc").write_bytes(b"4")
    entries = list(listing.iter_objects(str(tmp_path)))
    assert [os.path.basename(e.uri) for e in entries] == ["x.dcm"]
    assert entries[0].size == 1 and entries[0].version == str(os.stat(tmp_path / "a" / "x.dcm").st_mtime_ns)


def test_a_symlink_loop_neither_repeats_nor_hangs(tmp_path):
    archive = tmp_path / "archive"
    (archive / "p1" / "s1").mkdir(parents=True)
    (archive / "p1" / "s1" / "a.dcm").write_bytes(b"a")
    (archive / "p1" / "s1" / "loop").symlink_to(archive, target_is_directory=True)  # back to the top
    (archive / "p1" / "self").symlink_to(archive / "p1", target_is_directory=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "b.dcm").write_bytes(b"b")
    (outside / "back").symlink_to(outside, target_is_directory=True)
    (archive / "linked").symlink_to(outside, target_is_directory=True)

    default = sorted(e.uri for e in listing.iter_objects(str(archive)))
    assert default == [str(archive / "p1" / "s1" / "a.dcm")]  # directory links are not followed
    roots = listing.real_roots([str(archive)])
    followed = sorted(e.uri for e in listing.iter_objects(str(archive), follow_symlinks=True, roots=roots))
    assert followed == [str(archive / "linked" / "b.dcm"), str(archive / "p1" / "s1" / "a.dcm")]
    # the fan-out and the per-unit listing together list every object once
    units, _ = planning.fan_out([str(archive)], follow_symlinks=True)
    together = sorted(e.uri for u in units for e in listing.iter_objects(u.prefix, u.recursive, True, roots))
    assert together == followed


def test_fan_out_is_repeatable_and_leaves_flat_folders_whole(tmp_path):
    for p in range(3):
        for s in range(2):
            (tmp_path / f"p{p}" / f"s{s}").mkdir(parents=True)
            (tmp_path / f"p{p}" / f"s{s}" / "x.dcm").write_bytes(b"x")
    (tmp_path / "top.dcm").write_bytes(b"t")
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(1001):  # more than a listing page of objects: not expanded, one unit
        (flat / f"{i}.dcm").write_bytes(b"")
    (flat / "sub").mkdir()
    many = tmp_path / "many"
    for i in range(1100):  # more than a page of sub-folders: expanded all the same
        (many / f"d{i:04d}").mkdir(parents=True)
    (many / "d0007" / "x.dcm").write_bytes(b"x")
    units, depth = planning.fan_out([str(tmp_path)])
    # level 1 (p0..p2, flat, many) holds 5 folders; level 2 holds 1,106, past TARGET_UNITS: it stops there
    assert depth == 2 < planning.MAX_FANOUT_DEPTH
    assert planning.Unit(str(tmp_path / "p0" / "s1") + "/", True) in units  # the folders of level 2, whole
    assert planning.Unit(str(flat) + "/", True) in units
    assert planning.Unit(str(tmp_path) + "/", False) in units  # the objects directly at the top
    assert planning.Unit(str(many / "d0007") + "/", True) in units and len(units) > 1100
    again, _ = planning.fan_out([str(tmp_path)], depth)
    assert again == units
    listed = sorted(e.uri for u in units for e in listing.iter_objects(u.prefix, u.recursive))
    assert listed == sorted(e.uri for e in listing.iter_objects(str(tmp_path)))  # each object exactly once
    assert len({partition_of(u.key, 7) for u in units}) > 1


def test_layout_round_trip():
    layout = Layout(("s3://b/a",), 2, 16, 8)
    assert Layout.from_json(layout.to_json()) == layout
    assert bucket_of("dcm-x", 8) == bucket_of("dcm-x", 8) and 0 <= bucket_of("dcm-x", 8) < 8


# ---- scan and manifest join ------------------------------------------------------------------------
def test_an_unchanged_object_is_not_read_again(tmp_path, monkeypatch):
    files = _series(tmp_path, "s1") + _series(tmp_path, "s2", seed=1)
    units = [planning.Unit(str(tmp_path), True)]
    first, counts, _ = planning.scan_partition(units, [], LIMITS, False, ())
    assert counts.scanned == counts.listed == len(files) and counts.reused == 0
    assert {r.kind for r in first} == {ObjectKind.IMAGE} and len({r.volume_id for r in first}) == 2

    reads = Reads(monkeypatch)
    again, counts, reused = planning.scan_partition(units, first, LIMITS, False, ())
    assert reads.uris == [] and counts.reused == len(files) and counts.scanned == 0
    assert again == first and reused == set(files)

    replaced = files[0]
    os.utime(replaced, ns=(time.time_ns(), time.time_ns() + 10_000_000_000))  # a new version
    late = _series(tmp_path, "s3", n=1, seed=2)[0]
    third, counts, _ = planning.scan_partition(units, first, LIMITS, False, ())
    assert sorted(reads.uris) == sorted([replaced, late]) and counts.scanned == 2
    assert len(third) == len(files) + 1


def test_transient_errors_are_scanned_again(tmp_path, monkeypatch):
    (path,) = _series(tmp_path, "s", n=1)
    units = [planning.Unit(str(tmp_path), True)]
    rows, _, _ = planning.scan_partition(units, [], LIMITS, False, ())
    failed = [ObjectRow.from_row({**rows[0].to_row(), "kind": "error", "error_type": "storage"})]
    reads = Reads(monkeypatch)
    planning.scan_partition(units, failed, LIMITS, False, ())
    assert reads.uris == [path]


def test_scan_guards_every_object(tmp_path, monkeypatch):
    """An unexpected exception in one object's scan becomes that object's row."""
    _series(tmp_path, "s", n=2)
    real = scanning.scan_header

    def explode(data, uri, size=None, *args):
        if uri.endswith("IM00001.dcm"):
            raise RuntimeError("boom")
        return real(data, uri, size, *args)

    monkeypatch.setattr(scanning, "scan_header", explode)
    rows, _, _ = planning.scan_partition([planning.Unit(str(tmp_path), True)], [], LIMITS, False, ())
    bad = [r for r in rows if r.kind == ObjectKind.ERROR]
    assert len(bad) == 1 and bad[0].error_type == "internal" and "IM00001.dcm: " in bad[0].reason
    assert "(RuntimeError" in bad[0].reason and "boom" not in bad[0].reason  # the type, never the text
    assert bad[0].volume_id.startswith("obj-")


def test_the_output_prefix_is_not_listed(tmp_path):
    _series(tmp_path, "s", n=2)
    (tmp_path / "out" / "masks").mkdir(parents=True)
    (tmp_path / "out" / "masks" / "m.nii.gz").write_bytes(b"x")
    output = OutputNames.of(str(tmp_path / "out"), (str(tmp_path),))
    rows, counts, _ = planning.scan_partition([planning.Unit(str(tmp_path), True)], [], LIMITS, False, (), output)
    assert counts.listed == 2 and all("/out/" not in r.uri for r in rows)


# ---- merging and the change rule ---------------------------------------------------------------------
def _rows(tmp_path, name: str, n: int = 6, seed: int = 0) -> list[ObjectRow]:
    _series(tmp_path, name, n=n, seed=seed)
    rows, _, _ = planning.scan_partition([planning.Unit(str(tmp_path / name), True)], [], LIMITS, False, ())
    return rows


def test_a_series_split_across_partitions_is_one_volume(tmp_path):
    rows = _rows(tmp_path, "s")
    a = planning.fragments_of(rows[:2], 4)
    b = planning.fragments_of(rows[2:], 4)
    assert len(a) == len(b) == 1 and a[0].volume_id == b[0].volume_id and a[0].bucket == b[0].bucket
    (p,) = planning.merge_bucket(a + b, {}, _settings())
    assert p.action == Action.SEGMENT and p.format == Format.DICOM
    assert sorted(m.uri for m in p.members) == sorted(r.uri for r in rows)
    assert p.source == str(tmp_path / "s") + "/"


def test_copies_of_an_instance_are_set_aside(tmp_path):
    rows = _rows(tmp_path, "s", n=3)
    copy = ObjectRow.from_row({**rows[0].to_row(), "uri": str(tmp_path / "resent.dcm"),
                               "object_uri": str(tmp_path / "resent.dcm"), "size": rows[0].size - 10})
    planned = planning.merge_bucket(planning.fragments_of(rows + [copy], 4), {}, _settings())
    by_action = {p.action: p for p in planned}
    assert len(by_action[Action.SEGMENT].members) == 3
    aside = by_action[Action.SET_ASIDE].record.to_row()
    assert aside["status"] == "skipped" and aside["error_type"] == "duplicate_instance"
    assert aside["source"].endswith("resent.dcm")


def test_the_change_rule(tmp_path):
    rows = _rows(tmp_path, "s", n=4)
    s = _settings()
    (p,) = planning.merge_bucket(planning.fragments_of(rows, 4), {}, s)
    done = VolumeRecord(volume_id=p.volume_id, source=p.source, format=Format.DICOM, series_uid=p.series_uid,
                        status=Status.OK, fingerprint=p.fingerprint, model_identity="id-1")

    def plan(members, previous, **kw):
        (q,) = planning.merge_bucket(planning.fragments_of(members, 4), {p.volume_id: previous}, _settings(**kw))
        return q

    assert plan(rows, done).action == Action.CARRY  # unchanged: carried over
    carried = plan(rows, done).record.to_row()
    assert {k: v for k, v in carried.items() if k != "selection_facts"} == {
        k: v for k, v in done.to_row().items() if k != "selection_facts"}
    assert carried["selection_facts"]["n_slices"] == len(rows)  # made from the members, kept
    assert plan(rows, replace(done, status=Status.ERROR)).action == Action.SEGMENT  # failed last time: again
    assert plan(rows, done, model_identity="id-2").action == Action.SEGMENT  # another model
    replaced = [ObjectRow.from_row({**rows[0].to_row(), "object_version": "new"}), *rows[1:]]
    assert plan(replaced, done).action == Action.SEGMENT  # a file replaced
    assert plan(rows[:-1], done).action == Action.SEGMENT  # a slice gone
    late = ObjectRow.from_row({**rows[0].to_row(), "uri": "late.dcm", "sop_instance_uid": "9.9"})
    assert plan(rows + [late], done).action == Action.SEGMENT  # a late slice arrived
    # an output this run asks for and the last run did not write: redone; present or refused: carried
    assert plan(rows, done, dicom_seg=True).action == Action.SEGMENT
    assert plan(rows, replace(done, seg_uri="o/seg/v.dcm"), dicom_seg=True).action == Action.CARRY
    assert plan(rows, replace(done, seg_skipped="no sources"), dicom_seg=True).action == Action.CARRY
    assert plan(rows, done, qc=True).action == Action.SEGMENT
    assert plan(rows, replace(done, qc_uri="o/qc/v.png"), qc=True).action == Action.CARRY


def test_objects_set_aside_become_rows_with_reasons(tmp_path):
    (tmp_path / "notes.txt").write_bytes(b"not dicom at all")
    rows, _, _ = planning.scan_partition([planning.Unit(str(tmp_path), True)], [], LIMITS, False, ())
    (p,) = planning.merge_bucket(planning.fragments_of(rows, 4), {}, _settings())
    record = p.record.to_row()
    assert p.action == Action.SET_ASIDE and record["status"] == "error" and record["error_type"] == "not_dicom"
    assert record["volume_id"].startswith("obj-") and record["source"].endswith("notes.txt")
    assert p.kind == RowKind.SET_ASIDE and record["kind"] == RowKind.SET_ASIDE


def test_unchanged_fragments_travel_without_members(tmp_path):
    """A re-run's unchanged volume crosses the shuffle as a fingerprint; a volume that must be
    segmented although nothing changed (it failed last time) has its members fetched by reference."""
    rows = _rows(tmp_path, "s", n=4)
    s = _settings()
    whole = planning.fragments_of(rows, 4)
    halves = planning.fragments_of(rows[:2], 4, 1, {r.uri for r in rows}) + planning.fragments_of(
        rows[2:], 4, 2, {r.uri for r in rows})
    assert all(f.members is None for f in halves)
    assert planning.combine(f.fingerprint for f in halves) == whole[0].fingerprint  # split-independent
    (p,) = planning.merge_bucket(whole, {}, s)
    done = VolumeRecord(volume_id=p.volume_id, source=p.source, format=Format.DICOM, series_uid=p.series_uid,
                        status=Status.OK, fingerprint=p.fingerprint, model_identity="id-1")
    (carried,) = planning.merge_bucket(halves, {p.volume_id: done}, s)  # no loader needed
    assert carried.action == Action.CARRY and carried.record.to_row() == done.to_row()
    (wants_seg,) = planning.merge_bucket(halves, {p.volume_id: done}, _settings(dicom_seg=True),
                                         lambda part, vid: rows[:2] if part == 1 else rows[2:])
    assert wants_seg.action == Action.SEGMENT and len(wants_seg.members) == 4

    asked = []

    def load(partition, vid):
        asked.append(partition)
        return [r for r in (rows[:2] if partition == 1 else rows[2:]) if r.volume_id == vid]

    (again,) = planning.merge_bucket(halves, {p.volume_id: replace(done, status=Status.ERROR)}, s, load)
    assert again.action == Action.SEGMENT and sorted(asked) == [1, 2]
    assert sorted(m.uri for m in again.members) == sorted(r.uri for r in rows)
    gone = planning.fragments_of(rows[:3], 4, 1, {r.uri for r in rows})  # a slice deleted
    (shrunk,) = planning.merge_bucket(gone, {p.volume_id: done}, s, lambda part, vid: rows[:3])
    assert shrunk.action == Action.SEGMENT and len(shrunk.members) == 3


# ---- typed rows ------------------------------------------------------------------------------------
def test_rows_round_trip_through_parquet(tmp_path):
    rows = _rows(tmp_path, "s", n=2)
    back = [ObjectRow.from_row(r) for r in rows_from_bytes(table_bytes(ObjectRow, [r.to_row() for r in rows]))]
    assert back == rows and isinstance(back[0].orientation, tuple) and back[0].kind is ObjectKind.IMAGE
    facts = VolumeFacts(modality="CT", image_type=("ORIGINAL", "PRIMARY"), slice_thickness=1.5, n_slices=2,
                        pixel_spacing=(0.5, 0.5), contrast=None)
    rec = VolumeRecord("v", "s", Format.DICOM, "1.2", Status.OK, selection_facts=facts, n_objects=2)
    planned = [PlannedVolume("v", 1, Action.SEGMENT, "f", Format.DICOM, "s", "1.2", tuple(rows), facts=facts),
               PlannedVolume("w", 1, Action.CARRY, "f", Format.NIFTI, "s", "", record=rec, facts=facts),
               PlannedVolume("x", 1, Action.SET_ASIDE, "f", Format.NIFTI, "s", "")]
    # members, record and facts are nested Arrow columns (a list of structs, structs), not JSON text
    data = table_bytes(PlannedVolume, [p.to_row() for p in planned])
    schema = pq.read_schema(pa.BufferReader(data))
    assert pa.types.is_list(schema.field("members").type) and pa.types.is_struct(schema.field("record").type)
    assert pa.types.is_struct(schema.field("facts").type)
    back = [PlannedVolume.from_row(r) for r in rows_from_bytes(data)]
    assert back == planned and isinstance(back[0].members[0], ObjectRow) and back[1].record.selection_facts == facts
    assert back[0].members[0].kind is ObjectKind.IMAGE and back[1].facts.image_type == ("ORIGINAL", "PRIMARY")
    frags = planning.fragments_of(rows, 4)
    assert [Fragment.from_row(r) for r in rows_from_bytes(table_bytes(Fragment, [f.to_row() for f in frags]))] == frags
    assert [f.name for f in VolumeRecord.arrow_schema()][:5] == ["volume_id", "source", "format", "series_uid", "status"]
    with pytest.raises(ValueError, match="unknown fields"):
        VolumeRecord.from_row({"volume_id": "v", "nonsense": 1})


def test_localizers_are_skipped_unless_kept(tmp_path):
    """A scout in the CT's series (another orientation, one slice) and a 3-slice series, both typed
    LOCALIZER, are skipped rows with reason 'localizer'; --keep-localizers segments them."""
    from support.dicom_factory import edit, write_series
    from unet_core.synthetic import SeriesSpec

    paths, _, _ = write_series(tmp_path / "ct", SeriesSpec(rows=16, columns=16, n_slices=4))
    scout, _, _ = write_series(tmp_path / "scout", SeriesSpec(orientation="coronal", rows=16, columns=16, n_slices=1))
    typed, _, _ = write_series(tmp_path / "typed", SeriesSpec(orientation="sagittal", rows=16, columns=16, n_slices=3))
    uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
    edit(scout[0], lambda ds: setattr(ds, "SeriesInstanceUID", uid))
    edit(scout[0], lambda ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    for p in typed:
        edit(p, lambda ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    rows, _, _ = planning.scan_partition([planning.Unit(str(tmp_path), True)], [], LIMITS, False, ())
    planned = planning.merge_bucket(planning.fragments_of(rows, 1), {}, _settings(buckets=1))
    by_action = {a: [p for p in planned if p.action == a] for a in Action}
    assert [p.series_uid for p in by_action[Action.SEGMENT]] == [uid]
    aside = [p.record.to_row() for p in by_action[Action.SET_ASIDE]]
    assert len(aside) == 4 and {r["status"] for r in aside} == {"skipped"} and {r["error_type"] for r in aside} == {"localizer"}
    assert any("ImageType ORIGINAL\\PRIMARY\\LOCALIZER" in r["error"] for r in aside)
    kept = planning.merge_bucket(planning.fragments_of(rows, 1), {}, _settings(buckets=1, keep_localizers=True))
    assert sum(p.action == Action.SEGMENT for p in kept) == 3


def test_the_volume_budget_is_checked_from_headers_before_pixels(tmp_path, monkeypatch):
    from unet_core.config import Limits

    rows = _rows(tmp_path, "s", n=4)  # 4 slices of the factory's size
    need = 4 * rows[0].rows * rows[0].columns * 4
    (p,) = planning.merge_bucket(planning.fragments_of(rows, 4), {}, _settings(limits=Limits(max_volume_bytes=need - 1)))
    rec = p.record.to_row()
    assert p.action == Action.SET_ASIDE and rec["status"] == "error" and rec["error_type"] == "resource_limit"
    assert f"need {need} bytes" in rec["error"] and "--max-volume-bytes" in rec["error"]
    (ok,) = planning.merge_bucket(planning.fragments_of(rows, 4), {}, _settings(
        limits=Limits(max_volume_bytes=max(need, sum(r.size for r in rows)))))  # the objects fit too
    assert ok.action == Action.SEGMENT


def test_a_single_slice_split_from_a_larger_volume_is_a_localizer(tmp_path):
    """A coronal slice in the CT's series without any LOCALIZER type: every volume of a series is
    routed to one bucket (whatever the bucket count), where the lone slice split from the 4-slice
    volume is skipped as a localizer; a single-slice series of its own is still segmented, and
    --keep-localizers keeps the split-off slice."""
    from support.dicom_factory import edit, write_series

    paths, _, _ = write_series(tmp_path / "ct", SeriesSpec(rows=16, columns=16, n_slices=4))
    scout, _, _ = write_series(tmp_path / "scout", SeriesSpec(orientation="coronal", rows=16, columns=16, n_slices=1))
    lone, _, _ = write_series(tmp_path / "lone", SeriesSpec(orientation="sagittal", rows=16, columns=16, n_slices=1))
    uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
    edit(scout[0], lambda ds: setattr(ds, "SeriesInstanceUID", uid))
    rows, _, _ = planning.scan_partition([planning.Unit(str(tmp_path), True)], [], LIMITS, False, ())
    for buckets in (1, 7, 64):
        frags = planning.fragments_of(rows, buckets)
        assert len({f.bucket for f in frags if f.volume_id.startswith("dcm-") and f.bucket is not None
                    and any(m.series_uid == uid for m in f.members or ())}) == 1  # both volumes of the series in one bucket
        planned = [p for b in sorted({f.bucket for f in frags})
                   for p in planning.merge_bucket([f for f in frags if f.bucket == b], {}, _settings(buckets=buckets))]
        segmented = sorted((p.series_uid, len(p.members)) for p in planned if p.action == Action.SEGMENT)
        lone_uid = pydicom.dcmread(lone[0]).SeriesInstanceUID
        assert segmented == sorted([(uid, 4), (lone_uid, 1)])
        (aside,) = [p.record.to_row() for p in planned if p.action == Action.SET_ASIDE]
        assert aside["status"] == "skipped" and aside["error_type"] == "localizer" and aside["source"] == scout[0]
        assert "split from the 4-slice volume" in aside["error"]
    kept = planning.merge_bucket(planning.fragments_of(rows, 1), {}, _settings(buckets=1, keep_localizers=True))
    assert sum(p.action == Action.SEGMENT for p in kept) == 3


def test_planning_guards_each_volume(tmp_path, monkeypatch):
    """An unexpected exception while planning one volume makes its objects `internal` rows; the
    bucket's other volumes are planned."""
    _series(tmp_path, "a", n=3, seed=1)
    bad = _series(tmp_path, "b", n=3, seed=2)
    bad_uid = pydicom.dcmread(bad[0]).SeriesInstanceUID
    rows, _, _ = planning.scan_partition([planning.Unit(str(tmp_path), True)], [], LIMITS, False, ())
    real = planning.group_series

    def fails_for_b(headers, **kw):
        headers = list(headers)
        if headers[0].series_uid == bad_uid:
            raise RuntimeError("boom")
        return real(headers, **kw)

    monkeypatch.setattr(planning, "group_series", fails_for_b)
    planned = planning.merge_bucket(planning.fragments_of(rows, 1), {}, _settings(buckets=1))
    assert [p.action for p in planned if p.action == Action.SEGMENT] == [Action.SEGMENT]
    aside = [p.record.to_row() for p in planned if p.action == Action.SET_ASIDE]
    assert sorted(r["source"] for r in aside) == sorted(bad)
    assert {r["error_type"] for r in aside} == {"internal"} and all(
        "(RuntimeError" in r["error"] and "boom" not in r["error"] for r in aside)


def test_copies_of_an_instance_with_other_pixels_are_a_conflict_naming_both(tmp_path):
    """Identical copies collapse; a copy whose pixels differ makes its volume an error row
    `conflicting_instances` naming both objects (before any volume is decoded)."""
    import pydicom

    paths = _series(tmp_path, "s", n=4)
    ds = pydicom.dcmread(paths[1])
    (tmp_path / "s" / "same_again.dcm").write_bytes(open(paths[2], "rb").read())
    arr = ds.pixel_array.copy()
    arr[0, 0] += 7
    ds.PixelData = arr.tobytes()
    ds.save_as(tmp_path / "s" / "other_pixels.dcm")
    rows, _, _ = planning.scan_partition([planning.Unit(str(tmp_path / "s"), True)], [], LIMITS, False, ())
    planned = planning.merge_bucket(planning.fragments_of(rows, 1), {}, _settings(buckets=1))
    records = [p.record.to_row() for p in planned if p.action == Action.SET_ASIDE]
    (conflict,) = [r for r in records if r["error_type"] == "conflicting_instances"]
    assert conflict["status"] == "error" and conflict["volume_id"].startswith("dcm-")
    assert os.path.basename(paths[1]) in conflict["error"] and "other_pixels.dcm" in conflict["error"]
    (copy,) = [r for r in records if r["error_type"] == "duplicate_instance"]  # identical: one kept, one aside
    assert {os.path.basename(copy["source"]), os.path.basename(copy["error"].split("kept ")[1].rstrip(")"))} == {
        os.path.basename(paths[2]), "same_again.dcm"}
    assert not [p for p in planned if p.action == Action.SEGMENT]


def test_a_volume_whose_objects_hold_more_than_the_budget_is_an_error_row(tmp_path):
    """The bytes of a volume's objects are all in memory while it decodes: a ceiling, checked
    from the listing, before any of them is read for decoding."""
    rows = _rows(tmp_path, "s", n=4)
    held = sum(r.size for r in rows)
    voxels = 4 * 16 * 16 * 4
    assert held > voxels  # small slices: the objects are larger than their voxels
    from unet_core.config import Limits

    (p,) = planning.merge_bucket(planning.fragments_of(rows, 4), {}, _settings(limits=Limits(max_volume_bytes=held - 1)))
    record = p.record.to_row()
    assert p.action == Action.SET_ASIDE and record["error_type"] == "resource_limit" and "objects hold" in record["error"]


def test_a_rerun_with_another_privacy_setting_redoes_the_rows(tmp_path):
    """Rows made with --keep-phi carry identifiers in their metadata: a run without it redoes them
    (and the other way round), so identifiers never survive dropping the switch."""
    rows = _rows(tmp_path, "s", n=3)
    (p,) = planning.merge_bucket(planning.fragments_of(rows, 4), {}, _settings())
    done = VolumeRecord(volume_id=p.volume_id, source=p.source, format=Format.DICOM, series_uid=p.series_uid,
                        status=Status.OK, fingerprint=p.fingerprint, model_identity="id-1", keep_phi=True)
    (again,) = planning.merge_bucket(planning.fragments_of(rows, 4), {p.volume_id: done}, _settings(keep_phi=True))
    assert again.action == Action.CARRY
    (dropped,) = planning.merge_bucket(planning.fragments_of(rows, 4), {p.volume_id: done}, _settings())
    assert dropped.action == Action.SEGMENT
