"""A first run's layout sized to the work (partitions.py), and a re-run with nothing new that reads
only what it must: each stored part once, no completion record, no input object, and no
series_index row built (partitions_reuse.py). Requests are counted at a real S3 server (moto on
loopback, through a recording proxy)."""
from __future__ import annotations

import contextlib
from collections import Counter

from support.faultproxy import FaultProxy
from support.segment_run import segment_settings, serial_plan, serial_run
from unet_core.errors import NotFoundError
from unet_core.io import listing, storage
from unet_core.segmentation import partitions, partitions_reuse, planning
from unet_core.segmentation import run as run_module
from unet_core.segmentation import store as store_module
from unet_core.segmentation.partitions import Counts, choose_counts
from unet_core.segmentation.store import OutputStore
from unet_core.synthetic import Phantom, SeriesSpec, dicom_series


def _series(root: str, name: str, seed: int, n: int = 3) -> list[str]:
    uris = []
    for fname, data in dicom_series(Phantom.random(seed), SeriesSpec(rows=16, columns=16, n_slices=n), seed=seed)[0]:
        uris.append(storage.join(root, name, fname))
        storage.write_bytes(uris[-1], data)
    return uris


def test_partitions_and_buckets_are_sized_to_the_units_and_the_slots():
    # 4,000 series folders on this machine's 2 slots: 16 folders a partition, 64 a bucket
    assert choose_counts(4000, 2) == Counts(250, 63)
    assert choose_counts(400, 2) == Counts(25, 7)
    # few units: at least 8 partitions per slot (one per scan task), never more than units; >= 4 buckets
    assert choose_counts(1, 1) == Counts(1, 4)
    assert choose_counts(12, 1) == Counts(8, 4)
    assert choose_counts(100, 32) == Counts(100, 64)
    # the bounds of large archives stay
    assert choose_counts(200_000, 64) == Counts(partitions.MAX_PARTITIONS, partitions.MAX_BUCKETS)
    for units in (1, 7, 16, 17, 300, 5000, 40_000):
        for slots in (1, 2, 8, 200):
            c = choose_counts(units, slots)
            assert 1 <= c.partitions <= min(units, partitions.MAX_PARTITIONS)
            assert partitions.MIN_BUCKETS <= c.buckets <= partitions.MAX_BUCKETS


def test_a_first_run_writes_the_layout_the_rule_gives(tmp_path):
    root = str(tmp_path / "in")
    for i in range(20):
        _series(root, f"s{i:02d}", seed=i, n=2)
    _, planned = serial_plan([root], str(tmp_path / "out"))
    assert (planned.layout.partitions, planned.layout.buckets) == (8, 4)  # 20 folders, 1 slot (serial)
    assert OutputStore(str(tmp_path / "out")).read_layout() == planned.layout


def test_the_unchanged_path_gives_the_fragments_of_the_rows(tmp_path):
    """The fragments built from the join's columns alone equal those of the rows read whole."""
    root = str(tmp_path / "in")
    for i in range(3):
        _series(root, f"s{i}", seed=i)
    (tmp_path / "in" / "notes.txt").write_text("not a DICOM object")  # an object set aside
    units = [planning.Unit(root + "/", True)]
    rows, _, _ = planning.scan_partition(units, [], segment_settings().limits, False, ())
    data = OutputStore(str(tmp_path / "out"))
    data.write_index(3, rows)
    stored = data.read_index_bytes(3)
    entries = list(listing.iter_objects(root + "/"))
    cols = partitions_reuse.stored_columns(stored)
    fast = partitions_reuse.unchanged_fragments(entries, cols, "", 7, 3)
    slow = planning.fragments_of(rows, 7, 3, {r.object_uri for r in rows})
    slow[0].listed = slow[0].reused = len(entries)
    assert fast == slow and len(fast) == 4
    # an object changed, gone or new: not this path
    assert partitions_reuse.unchanged_fragments(entries[1:], cols, "", 7, 3) is None
    changed = [entries[0].__class__(entries[0].uri, entries[0].size, "another version"), *entries[1:]]
    assert partitions_reuse.unchanged_fragments(changed, cols, "", 7, 3) is None
    assert partitions_reuse.unchanged_fragments(entries, cols, "other patterns", 7, 3) is None


def test_a_rerun_with_nothing_new_is_planned_without_the_executor(tmp_path, monkeypatch):
    """plan_unchanged gives the executor's plan when nothing changed, with no executor at all; a
    volume to segment, an output above the size limit or a new object make it give up (None) with
    nothing written, and the executor plans."""
    root, out = str(tmp_path / "in"), str(tmp_path / "out")
    for i in range(9):
        _series(root, f"s{i:02d}", seed=i, n=2)
    first = serial_run([root], out)
    assert first.summary.segmented_now == 9
    run, here = serial_plan([root], out, unchanged=True)
    _, there = serial_plan([root], out)
    assert here is not None and there is not None
    assert (here.listed, here.reused, here.scanned, here.todo) == (there.listed, there.reused, there.scanned, 0) \
        == (18, 18, 0, 0)
    assert here.totals == there.totals and here.seen == there.seen
    again = run.finish(here)  # nothing pending: no executor needed either
    assert again.parts_written == 0 and sum(again.by_status.values()) == 9

    store = OutputStore(out)

    def written() -> dict[str, bytes]:
        found = {}
        for folder in ("series_index", "volumes", "plan"):
            with contextlib.suppress(NotFoundError):  # no plan folder once a run is finished
                found |= {f.uri: storage.read_bytes(f.uri) for f in storage.list_files(f"{out}/{folder}")}
        return found

    before = written()
    assert any("/series_index/" in u for u in before) and any("/volumes/" in u for u in before)  # not vacuous
    # a volume to segment (here: every one, --qc asked for now) is left to the executor, nothing written
    assert serial_plan([root], out, unchanged=True, qc=True)[1] is None
    assert written() == before
    # an output larger than the driver should hold is not tried
    monkeypatch.setattr(run_module, "QUICK_PLAN_MAX_OBJECTS", 17)
    assert serial_plan([root], out, unchanged=True)[1] is None
    monkeypatch.setattr(run_module, "QUICK_PLAN_MAX_OBJECTS", 18)
    assert serial_plan([root], out, unchanged=True)[1] is not None
    # a new object: left to the executor, which scans it alone
    storage.write_bytes(f"{root}/s03/new.dcm", storage.read_bytes(next(iter(storage.list_files(f"{root}/s03"))).uri))
    assert serial_plan([root], out, unchanged=True)[1] is None
    assert written() == before
    assert not any(store.has_plan(b) for b in range(store.read_layout().buckets))
    assert serial_run([root], out).summary.headers_read == 1


def _gets(requests: list[str], bucket: str) -> Counter:
    """Object GETs (not listings) by key, as the server saw them."""
    keys = [r.split(" ")[1].split("?")[0] for r in requests if r.startswith("GET ") and "list-type" not in r]
    return Counter(k[len(f"/{bucket}/"):] for k in keys if k.startswith(f"/{bucket}/"))


def test_a_rerun_with_nothing_new_reads_only_what_it_must(s3_server, work_bucket, monkeypatch):
    root, out = f"s3://{work_bucket}/noop/archive", f"s3://{work_bucket}/noop/out"
    for i in range(9):
        _series(root, f"s{i:02d}", seed=i, n=2)
    first = serial_run([root], out)
    assert first.summary.segmented_now == 9
    layout = OutputStore(out).read_layout()
    assert (layout.partitions, layout.buckets) == (8, 4)  # 9 folders, 1 slot

    built = []
    real_rows = store_module.index_rows
    monkeypatch.setattr(planning, "index_rows", lambda data: built.append(1) or real_rows(data))
    port = int(s3_server.rsplit(":", 1)[1])
    with FaultProxy(port) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        storage._s3_filesystem.cache_clear()
        listing._s3_client.cache_clear()
        try:
            again = serial_run([root], out)
        finally:
            monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
            storage._s3_filesystem.cache_clear()
            listing._s3_client.cache_clear()
    assert again.summary.segmented_now == 0 and again.summary.headers_read == 0
    assert again.summary.headers_unchanged == 18 and again.totals.parts_written == 0
    gets = _gets(proxy.requests, work_bucket)
    assert not [k for k in gets if k.startswith("noop/archive/")]  # no input object read
    assert not [k for k in gets if k.startswith("noop/out/records/")]  # no completion record read
    index = {k: n for k, n in gets.items() if k.startswith("noop/out/series_index/")}
    volumes = {k: n for k, n in gets.items() if k.startswith("noop/out/volumes/")}
    assert len(index) == len(list(storage.list_files(f"{out}/series_index"))) and set(index.values()) == {1}
    # each part once, not three times (a bucket the volume ids' hashes left empty has no part)
    assert len(volumes) == len(list(storage.list_files(f"{out}/volumes"))) and set(volumes.values()) == {1}
    assert built == []  # the join read the index's columns, not its rows

    # one object changed: its partition's rows are read whole (and only its)
    storage.write_bytes(f"{root}/s03/new.dcm", storage.read_bytes(next(iter(storage.list_files(f"{root}/s03"))).uri))
    grown = serial_run([root], out)
    assert grown.summary.headers_read == 1 and len(built) == 1
