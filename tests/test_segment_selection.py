"""`unet segment` choosing what to segment: rules from the bundle and from --select, a re-run with
other rules, --limit and --sample, asked of the run on the serial executor in this process (the
choices are the run's, whatever executes it); --plan-only and what `unet status` says through the
job on the session's Ray with the analytic bundle (no model started for a plan)."""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from jobs import segment, status
from jobs.exits import Exit
from jobs.segment_args import selection_rules
from tests.support.segment_run import BUNDLE_INFO, serial_plan, serial_run
from unet_core.segmentation.summary import RunSummary
from unet_core.segmentation.tables import read_volume_table, write_plan_table
from unet_core.synthetic_studies import write_studies

CHEST = {"modality": ["CT"], "image_type_includes": ["ORIGINAL"], "image_type_excludes": ["LOCALIZER", "DERIVED"],
         "orientation": "axial", "slice_thickness_mm": [0.5, 3.0], "convolution_kernel": "^B[1-4]", "contrast": "no",
         "one_per_study": "thinnest"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("sel") / "archive"
    series = write_studies(str(root), n_patients=2, studies_per_patient=1, size=32, seed=11,
                           roles=("thin", "thick", "lung", "coronal", "mip", "dose"))
    return str(root), {s.series_uid: s.role for s in series}


def _run(*args: str) -> int:
    return segment.main([*args, "--batch-size", "8"])


def _roles(out: str, roles: dict) -> dict[str, list[tuple[str, str, str]]]:
    by = {}
    for r in read_volume_table(out):
        if r["volume_id"].startswith("obj-"):
            continue
        by.setdefault(roles[r["series_uid"]], []).append((r["status"], r["error_type"], r["error"]))
    return by


def _select_file(tmp_path: Path, rules: dict) -> str:
    path = tmp_path / "select.yaml"
    path.write_text(yaml.safe_dump(rules))
    return str(path)


def _rules(tmp_path: Path, select: dict | None, bundle_rules: dict | None = None) -> dict:
    """The run's rules as the job makes them: the bundle's input_rules, --select's file over them."""
    args = argparse.Namespace(select=_select_file(tmp_path, select) if select is not None else None)
    return selection_rules(args, replace(BUNDLE_INFO, input_rules=bundle_rules or {})).to_dict()


def test_rules_from_select_then_a_rerun_with_other_rules_redoes_only_the_differences(archive, tmp_path):
    root, roles = archive
    out = str(tmp_path / "out")
    first_run = serial_run([root], out, rules=_rules(tmp_path, {"orientation": "axial", "slice_thickness_mm": [0, 3]}))
    first = _roles(out, roles)
    assert {k: sorted(s for s, _, _ in v) for k, v in first.items()} == {
        "thin": ["ok", "ok"], "lung": ["ok", "ok"], "thick": ["skipped", "skipped"], "coronal": ["skipped", "skipped"],
        "mip": ["skipped", "skipped"]}
    assert all("slice_thickness 5 mm not in [0, 3]" in e for _, _, e in first["thick"])
    assert all("orientation coronal" in e for _, _, e in first["coronal"])
    summary = first_run.summary
    assert summary.volumes_not_selected == 6 and summary.not_selected_by_rule == {"slice_thickness": 4,
                                                                                  "orientation": 2}
    assert RunSummary.read(out) == summary
    masks_before = {p.name: p.stat().st_mtime_ns for p in Path(out, "masks").iterdir()}

    # other rules: the coronal reformats (3 mm) now count; the lung kernel no longer does
    other = _rules(tmp_path, {"slice_thickness_mm": [0, 3], "convolution_kernel": "^B3"})
    again = serial_run([root], out, rules=other).summary
    assert again.segmented_now == 2 and again.headers_read > 0  # a new free-text pattern: headers read again
    second = _roles(out, roles)
    assert [s for s, _, _ in second["coronal"]] == ["ok", "ok"]
    assert all(s == "skipped" and "convolution_kernel does not match '^B3'" in e for s, _, e in second["lung"])
    assert all(s == "ok" for s, _, _ in second["thin"])
    kept = {n: t for n, t in ((p.name, p.stat().st_mtime_ns) for p in Path(out, "masks").iterdir()) if n in masks_before}
    assert all(kept[n] == masks_before[n] for n in kept), (kept, masks_before)  # the thin series were not redone

    # the same rules again: nothing is read or redone
    third = serial_run([root], out, rules=other).summary
    assert third.segmented_now == 0 and third.headers_read == 0


def test_bundle_rules_apply_and_select_overrides_them_key_by_key(archive, tmp_path):
    root, roles = archive
    out = str(tmp_path / "out")

    def plan(rules: dict) -> list[dict]:
        _, planned = serial_plan([root], out, rules=rules)
        write_plan_table(out, planned.layout.buckets, set(planned.pending_buckets))  # --plan-only's table
        return pq.read_table(f"{out}/plan.parquet").to_pylist()

    plan_rows = plan(_rules(tmp_path, None, CHEST))
    to_segment = [r for r in plan_rows if r["plan"] == "segment"]
    assert sorted(roles[v] for v in _series_of(out, to_segment)) == ["thin", "thin"]
    # --select replaces the bundle's orientation and one_per_study, keeps the rest
    plan_rows = plan(_rules(tmp_path, {"orientation": "any", "image_type_includes": [], "image_type_excludes": [],
                                       "one_per_study": "all"}, CHEST))
    chosen = sorted(roles[v] for v in _series_of(out, [r for r in plan_rows if r["plan"] == "segment"]))
    assert chosen == ["coronal", "coronal", "thin", "thin"]  # the lung kernel and 5 / 10 mm still out


def _series_of(out: str, plan_rows: list[dict]) -> list[str]:
    index = {r["volume_id"]: r["series_uid"] for r in _index_rows(out)}
    return [index[r["volume_id"]] for r in plan_rows]


def _index_rows(out: str) -> list[dict]:
    from unet_core.segmentation.tables import read_series_index

    return read_series_index(out)


def test_plan_only_loads_no_model_writes_no_mask_and_a_run_then_carries_it_out(
        archive, tmp_path, ray_local, phantom_bundle, monkeypatch, capsys):
    from jobs.predictors import Predictors

    root, roles = archive
    out = str(tmp_path / "out")

    def no_model(*a, **k):
        raise AssertionError("--plan-only started a predictor")

    monkeypatch.setattr(Predictors, "start", no_model)
    monkeypatch.setattr(Predictors, "ready", no_model)
    assert _run("--input", root, "--model", phantom_bundle, "--output", out, "--plan-only", "--select",
                _select_file(tmp_path, CHEST)) == Exit.OK
    printed = capsys.readouterr().out
    assert "plan: 10 volumes: 2 to segment" in printed and "8 not selected" in printed, printed
    assert "estimate: 64 slices" in printed, printed
    assert not Path(out, "masks").exists() and Path(out, "plan.parquet").exists()
    plan = pq.read_table(f"{out}/plan.parquet").to_pylist()
    assert {r["plan"] for r in plan} == {"segment", "not_selected"}
    assert all(r["reason"] for r in plan if r["plan"] == "not_selected")
    assert all(r["estimated_bytes"] == r["n_slices"] * 32 * 32 * 4 for r in plan)
    monkeypatch.undo()
    assert _run("--input", root, "--model", phantom_bundle, "--output", out, "--select",
                _select_file(tmp_path, CHEST)) == Exit.OK
    summary = RunSummary.read(out)
    assert summary.segmented_now == 2 and summary.headers_read == 0  # the plan-only run's scan is reused
    assert sorted(p.name for p in Path(out, "masks").iterdir()) == sorted(
        f"{r['volume_id']}.nii.gz" for r in plan if r["plan"] == "segment")
    status.main([out])
    said = capsys.readouterr().out
    assert "selection: modality=['CT']" in said and "one_per_study=thinnest" in said
    assert "2 ok, 0 failed, 8 not selected" in said and "not selected, by rule:" in said


def test_limit_and_sample_are_the_same_volumes_on_every_run(archive, tmp_path):
    root, _ = archive
    picks = []
    for run in range(2):
        out = str(tmp_path / f"out{run}")
        serial_run([root], out, limit=3, seed=5)
        rows = read_volume_table(out)
        picks.append(sorted(r["volume_id"] for r in rows if r["status"] == "ok"))
        assert sum("beyond the --limit 3 (seed 5)" in r["error"] for r in rows) == 10 - 3
    assert len(picks[0]) == 3 and picks[0] == picks[1]
    # the rest of the archive is segmented by a run without the limit; the three are not redone
    assert serial_run([root], str(tmp_path / "out0")).summary.segmented_now == 7
    sampled = [sorted(r["volume_id"] for r in read_volume_table(str(tmp_path / f"s{run}")) if r["status"] == "ok")
               for run in range(2) if serial_run([root], str(tmp_path / f"s{run}"), sample=0.5, seed=5)]
    assert sampled[0] == sampled[1] and 0 < len(sampled[0]) < 10
