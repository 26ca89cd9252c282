"""The segment run's orchestration on the serial executor, in this process: planning, the change
rule, the run-wide choices (demotion), table-part and plan bookkeeping, the summary, and reading an
output of the previous layout version. The Ray executor runs the same stage functions
(tests/test_segment*.py run it end to end)."""
from __future__ import annotations

import io
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import status
from jobs.exits import Exit
from tests.support.segment_run import bright, serial_plan, serial_run
from unet_core.report import aggregate_volume_table, segment_report
from unet_core.segmentation.layout import LAYOUT_VERSION, Layout
from unet_core.segmentation.records import SET_ASIDE_PREFIX, RowKind, Status, VolumeRecord
from unet_core.segmentation.selection import Rule
from unet_core.segmentation.store import Folder, OutputStore
from unet_core.segmentation.tables import read_volume_table, write_plan_table
from unet_core.synthetic_studies import write_studies


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """One patient, two studies of several series each (and a scout and a dose report), plus junk."""
    root = tmp_path_factory.mktemp("studies")
    series = write_studies(str(root), n_patients=1, studies_per_patient=2, size=16, seed=11,
                           roles=("scout", "thick", "mip", "coronal", "dose"))
    (root / "notes.txt").write_bytes(b"not an image")
    return root, series


def _archive(studies, tmp_path):
    root = tmp_path / "in"
    shutil.copytree(studies[0], root)
    return root


def _rows(out) -> list[VolumeRecord]:
    return OutputStore(str(out)).volume_table()


def test_a_run_then_a_rerun_then_a_change(studies, tmp_path):
    root, out = _archive(studies, tmp_path), tmp_path / "out"
    first = serial_run([str(root)], str(out))
    rows = _rows(out)
    volumes = [r for r in rows if r.kind == RowKind.VOLUME]
    aside = [r for r in rows if r.kind == RowKind.SET_ASIDE]
    assert volumes and all(r.status == Status.OK for r in volumes)
    assert {r.volume_id[:4] for r in aside} == {SET_ASIDE_PREFIX} and any(r.source.endswith("notes.txt") for r in aside)
    assert first.done.segmented == len(volumes) == first.summary.volumes_ok and first.done.failed == 0
    assert first.summary.objects_skipped + first.summary.volumes_failed == len(aside)
    assert first.summary.headers_read == first.summary.objects_listed > 0
    assert 0 <= first.summary.predictor_wait_seconds <= first.summary.pipeline_seconds  # the wait is in the pipeline
    store = OutputStore(str(out))
    for r in volumes:  # every output the row names, and its completion record
        assert os.path.exists(r.mask_uri) and os.path.exists(r.slices_uri)
        assert store.read_record(r.volume_id, r.fingerprint, ok_only=True) is not None
    assert not (out / Folder.PLAN.value).exists()  # the plan of a run under way is gone
    assert store.read_layout().version == LAYOUT_VERSION
    assert json.loads((out / "summary.json").read_text())["volumes_ok"] == len(volumes)

    again = serial_run([str(root)], str(out))  # nothing changed: nothing read, nothing written
    assert again.done.segmented == 0 and again.planned.scanned == 0 and again.planned.reused == again.planned.listed
    assert again.totals.parts_written == 0 and _rows(out) == rows

    victim = volumes[0]
    first_object = sorted(p for p in root.rglob("*.dcm") if victim.source.rstrip("/") in str(p))[0]
    first_object.write_bytes(first_object.read_bytes() + b"\0\0")  # one object replaced
    changed = serial_run([str(root)], str(out))
    assert changed.done.segmented == 1 and changed.planned.scanned == 1
    assert {r.volume_id for r in _rows(out) if r not in rows} == {victim.volume_id}  # the others carried

    gone = {r.volume_id for r in _rows(out) if r.source.startswith(str(root / "patient00" / "study1"))}
    shutil.rmtree(root / "patient00" / "study1")  # a study removed: its rows go, and an emptied part too
    serial_run([str(root)], str(out))
    assert gone and not gone & {r.volume_id for r in _rows(out)}
    layout = store.read_layout()
    for b in range(layout.buckets):
        if not store.read_volumes(b):
            assert not os.path.exists(store.volume_part_uri(b))


def test_the_run_wide_choices_leave_volumes_out_with_their_rule(studies, tmp_path):
    root, out = _archive(studies, tmp_path), tmp_path / "out"
    everything = serial_run([str(root)], str(out))
    n = everything.summary.volumes_ok
    # the same archive with one_per_study: the losers are carried rows demoted in their table part
    chosen = serial_run([str(root)], str(out), rules={"one_per_study": "thinnest"})
    assert chosen.done.segmented == 0 and chosen.summary.volumes_ok == 2  # one per study
    left = [r for r in _rows(out) if r.not_selected]
    assert len(left) == n - 2 and {r.rule for r in left} == {Rule.ONE_PER_STUDY}
    assert chosen.summary.not_selected_by_rule == {"one_per_study": n - 2}
    # --limit over a fresh output: the volumes to segment beyond it are demoted before any is read
    limited = serial_run([str(root)], str(tmp_path / "limited"), limit=1, rules={"modality": ["CT"]})
    assert limited.done.segmented == 1 == limited.summary.volumes_ok
    assert limited.summary.not_selected_by_rule == {"limit": n - 1}
    assert {r.rule for r in _rows(tmp_path / "limited") if r.not_selected} == {Rule.LIMIT}


def _json_facts(table: pa.Table) -> pa.Table:
    """The `selection_facts` struct column as layouts 3 and 4 wrote it: JSON text ("" for none)."""
    rows = table.to_pylist()
    for r in rows:
        f = r["selection_facts"]
        r["selection_facts"] = "" if f is None else json.dumps(f, separators=(",", ":"))
    i = table.schema.get_field_index("selection_facts")
    return pa.Table.from_pylist(rows, schema=table.schema.set(i, pa.field("selection_facts", pa.string())))


def _as_layout(out, version: int) -> None:
    """Rewrite an output as an earlier layout wrote it: layout.json's version, the volume-table parts
    and completion records with their selection facts as JSON text (4, 3), and without the `kind`
    and `rule` columns (3: a set-aside object known by its "obj-" id, a not_selected row's rule only
    in its message)."""
    layout = Layout.from_json((out / "layout.json").read_text())
    (out / "layout.json").write_text(json.dumps({**json.loads(layout.to_json()), "version": version}))
    for part in [*(out / "volumes").glob("*.parquet"), *(out / "records").glob("*/*.parquet")]:
        table = _json_facts(pq.read_table(part))
        if version == 3:
            table = table.drop_columns(["kind", "rule"])
        buf = io.BytesIO()
        pq.write_table(table, buf)
        part.write_bytes(buf.getvalue())


def test_an_output_of_layout_3_is_read_and_rerun(studies, tmp_path, capsys):
    root, out = _archive(studies, tmp_path), tmp_path / "out"
    made = serial_run([str(root)], str(out), rules={"one_per_study": "most_slices"})
    before = _rows(out)
    agg_before = aggregate_volume_table(str(out))
    _as_layout(out, 3)
    assert all("kind" not in pq.read_schema(p).names for p in (out / "volumes").glob("*.parquet"))

    assert _rows(out) == before  # kind and rule recovered from the id and the message
    agg = aggregate_volume_table(str(out))  # the report and `unet status`
    assert agg.by_status == agg_before.by_status and agg.not_selected == agg_before.not_selected
    assert agg.not_selected == {"one_per_study": made.summary.volumes_not_selected}
    assert status.main([str(out)]) == Exit.SOME_FAILED  # notes.txt is no DICOM
    printed = capsys.readouterr().out
    assert f"not selected, by rule: one_per_study {made.summary.volumes_not_selected}" in printed
    assert {r["kind"] for r in read_volume_table(str(out))} == {"volume", "set_aside"}

    rerun = serial_run([str(root)], str(out), rules={"one_per_study": "most_slices"})
    assert rerun.done.segmented == 0 and rerun.planned.scanned == 0  # the layout was reused, not redone
    assert OutputStore(str(out)).read_layout().version == LAYOUT_VERSION
    assert all("kind" in pq.read_schema(p).names for p in (out / "volumes").glob("*.parquet"))  # brought up
    assert _rows(out) == before


_USER_COLUMNS = ["volume_id", "status", "error", "error_type", "source", "mask_uri", "slices_uri", "kind", "rule"]


def _as_users_read_it(out) -> "pd.DataFrame":  # noqa: F821 - pandas, imported by pyarrow's to_pandas
    """The volume table as an analyst opens it: the folder as one dataset, in pandas."""
    import pyarrow.dataset as ds

    frame = ds.dataset(str(out / "volumes"), format="parquet").to_table().to_pandas()
    return frame.sort_values("volume_id").reset_index(drop=True)


def test_an_output_of_layout_4_is_read_and_rerun_and_its_user_columns_stay(studies, tmp_path, capsys):
    root, out = _archive(studies, tmp_path), tmp_path / "out"
    made = serial_run([str(root)], str(out), rules={"one_per_study": "most_slices"})
    before = _rows(out)
    assert any(r.selection_facts is not None for r in before)
    _as_layout(out, 4)
    assert all(pq.read_schema(p).field("selection_facts").type == pa.string()
               for p in (out / "volumes").glob("*.parquet"))
    old = _as_users_read_it(out)

    assert _rows(out) == before  # the facts' JSON text read into VolumeFacts
    assert aggregate_volume_table(str(out)).not_selected == {"one_per_study": made.summary.volumes_not_selected}
    assert status.main([str(out)]) == Exit.SOME_FAILED  # notes.txt is no DICOM
    assert f"not selected, by rule: one_per_study {made.summary.volumes_not_selected}" in capsys.readouterr().out

    rerun = serial_run([str(root)], str(out), rules={"one_per_study": "most_slices"})
    assert rerun.done.segmented == 0 and rerun.planned.scanned == 0  # the layout was reused, nothing redone
    assert OutputStore(str(out)).read_layout().version == LAYOUT_VERSION == 5
    for p in (out / "volumes").glob("*.parquet"):  # every part passed was brought up: facts a struct now
        assert pa.types.is_struct(pq.read_schema(p).field("selection_facts").type)
    assert _rows(out) == before
    # what a user reads of the table (ids, statuses, reasons, URIs) is the same, column for column
    new = _as_users_read_it(out)
    assert new[_USER_COLUMNS].equals(old[_USER_COLUMNS])
    assert all(new[c].map(type).eq(str).all() for c in _USER_COLUMNS)
    facts = new[new.kind == "volume"].selection_facts
    assert all(isinstance(f, dict) and f["n_slices"] > 0 for f in facts)  # a nested column, not text


def test_a_volume_whose_prediction_fails_is_an_error_row_and_redone_next_run(studies, tmp_path):
    root, out = _archive(studies, tmp_path), tmp_path / "out"

    def broken(x):
        raise RuntimeError("the model fell over")

    failed = serial_run([str(root)], str(out), predict=broken)
    junk = 1  # notes.txt: an error row of its own (set aside, not_dicom)
    assert failed.summary.volumes_ok == 0 and failed.summary.volumes_failed == failed.done.failed + junk
    assert failed.summary.failures_by_type == {"internal": failed.done.failed, "not_dicom": junk}
    fixed = serial_run([str(root)], str(out), predict=bright)
    assert fixed.done.segmented == failed.done.failed and fixed.summary.volumes_failed == len(
        [r for r in _rows(out) if r.kind == RowKind.SET_ASIDE and r.status == Status.ERROR])


def test_plan_only_counts_what_a_run_would_do_and_the_run_then_does_it(studies, tmp_path):
    root, out = _archive(studies, tmp_path), tmp_path / "out"
    run, planned = serial_plan([str(root)], str(out), rules={"one_per_study": "thinnest"})
    totals = write_plan_table(str(out), planned.layout.buckets, set(planned.pending_buckets))
    table = pq.read_table(out / "plan.parquet").to_pylist()
    assert totals.by_plan["segment"] == planned.todo == 2 == sum(r["plan"] == "segment" for r in table)
    assert totals.not_selected == {"one_per_study": len(table) - 2}
    assert {r["rule"] for r in table if r["plan"] == "not_selected"} == {"one_per_study"}
    assert totals.slices == sum(r["n_slices"] for r in table if r["plan"] == "segment") > 0
    assert not (out / "masks").exists()  # nothing segmented
    done = serial_run([str(root)], str(out), rules={"one_per_study": "thinnest"})
    assert done.done.segmented == 2 and done.summary.not_selected_by_rule == dict(totals.not_selected)


def test_the_report_links_what_the_output_holds(studies, tmp_path):
    root, out = _archive(studies, tmp_path), tmp_path / "out"
    made = serial_run([str(root)], str(out))
    (out / "seg").mkdir()  # an empty folder is nothing to link
    html = open(segment_report(str(out), made.summary)).read()
    for link in ("summary.json", "layout.json", "volumes/", "series_index/", "records/", "masks/", "slices/"):
        assert f'href="{link}"' in html, link
    assert 'href="seg/"' not in html and 'href="plan.parquet"' not in html and 'href="qc/"' not in html
