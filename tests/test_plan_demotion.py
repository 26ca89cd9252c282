"""The run-wide choices (one_per_study, --limit) applied to a bucket's stored plan
(tables.demote_bucket): the plan it leaves is the one `choosing.demote` makes of the whole plan,
row for row and value for value, while only the rows left out are parsed into PlannedVolumes;
a bucket left with nothing to segment gets its table part, as before. Planning runs as the job
runs it, on the serial executor."""
from __future__ import annotations

import pyarrow as pa
import pytest

from tests.support.segment_run import serial_plan
from unet_core.segmentation import choosing, run
from unet_core.segmentation.records import Action, PlannedVolume, Record
from unet_core.segmentation.store import OutputStore
from unet_core.segmentation.tables import _table_order
from unet_core.synthetic_studies import write_studies


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    write_studies(str(root), n_patients=2, studies_per_patient=2, size=16, seed=11)
    return str(root)


class Demotions:
    """Around the run's demote_bucket: each bucket's plan before the call, what the whole-plan
    demotion makes of it, and how many PlannedVolumes the call parses."""

    def __init__(self, monkeypatch):
        self.seen: list[tuple[int, list[PlannedVolume], list[PlannedVolume], int, int]] = []
        self.parsed = 0
        real_demote, real_from_row = run.demote_bucket, Record.from_row.__func__

        def counting(cls, row):
            self.parsed += 1
            return real_from_row(cls, row)

        def demote_bucket(bucket, d, s):
            store = s.store()
            before = store.read_plan(bucket) if store.has_plan(bucket) else []
            expected = choosing.demote(before, d.why, s, d.beyond)
            self.parsed = 0
            with monkeypatch.context() as m:
                m.setattr(PlannedVolume, "from_row", classmethod(counting))
                counts, todo = real_demote(bucket, d, s)
            self.seen.append((bucket, before, expected, self.parsed, todo))
            return counts, todo

        monkeypatch.setattr(run, "demote_bucket", demote_bucket)


def _check(out: str, seen: Demotions) -> tuple[int, int]:
    """Each demoted bucket against the whole-plan demotion; returns (plans rewritten, parts written)."""
    store, rewritten, parts = OutputStore(out), 0, 0
    for bucket, before, expected, parsed, todo in seen.seen:
        if not before:  # a bucket with nothing to segment: its table part was demoted (demote_rows)
            continue
        assert todo == sum(p.action == Action.SEGMENT for p in expected)
        left_out = sum(b.action != e.action for b, e in zip(before, expected, strict=True))
        assert left_out >= 1
        if todo:  # the plan stands, rewritten: the same rows as the whole-plan demotion, in order
            assert store.read_plan(bucket) == expected
            assert store.read_plan_arrow(bucket).equals(
                pa.Table.from_pylist([p.to_row() for p in expected], schema=PlannedVolume.arrow_schema()))
            assert parsed == left_out < len(before)  # only the rows left out were parsed
            rewritten += 1
        else:  # nothing left to segment: the rows are the bucket's table part, the plan gone
            assert not store.has_plan(bucket)
            assert store.read_volumes(bucket) == sorted((p.record for p in expected), key=_table_order)
            parts += 1
    return rewritten, parts


def test_one_per_study_rewrites_only_the_rows_it_leaves_out(archive, tmp_path, monkeypatch):
    seen = Demotions(monkeypatch)
    out = str(tmp_path / "out")
    _, planned = serial_plan([archive], out, rules={"orientation": "axial", "one_per_study": "thinnest"})
    # thin, lung, contrast (1.25 mm), thick and mip of every study are axial: one kept per study
    assert planned.todo == 4
    rewritten, _ = _check(out, seen)
    assert rewritten >= 2


def test_limit_rewrites_plans_and_settles_buckets_left_with_nothing(archive, tmp_path, monkeypatch):
    seen = Demotions(monkeypatch)
    out = str(tmp_path / "out")
    _, planned = serial_plan([archive], out, limit=2, seed=3)
    assert planned.todo == 2
    rewritten, parts = _check(out, seen)
    assert rewritten >= 1 and parts >= 1


def test_a_rerun_demotes_carried_rows_in_plans_that_keep_work(archive, tmp_path, monkeypatch):
    import shutil

    from tests.support.segment_run import serial_run

    root = tmp_path / "archive"
    shutil.copytree(archive, root)
    out = str(tmp_path / "out")
    serial_run([str(root)], out)  # every volume segmented: the re-run carries them
    write_studies(str(root / "more"), n_patients=2, studies_per_patient=1, size=16, seed=12)  # new work
    seen = Demotions(monkeypatch)
    _, planned = serial_plan([str(root)], out, rules={"orientation": "axial", "one_per_study": "thinnest"})
    assert planned.todo >= 1
    carried = sum(b.action == Action.CARRY and e.action == Action.SET_ASIDE
                  for _, before, expected, _, todo in seen.seen if todo for b, e in zip(before, expected, strict=True))
    assert carried >= 1  # carried ok rows left out of plans that keep volumes to segment
    rewritten, _ = _check(out, seen)
    assert rewritten >= 1
