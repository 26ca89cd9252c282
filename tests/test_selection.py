"""Selection rules (unet_core/segmentation/selection.py, choosing.py) over synthetic hospital
studies (unet_core/synthetic_studies.py): for each rule, the right series are selected and every
other volume is a not_selected row whose message names the rule and its values. Planning runs as
the job runs it (scan, fragments, buckets, the run-wide choices), without Ray."""
from __future__ import annotations

import json
import time
from collections import defaultdict

import pytest

from tests.support.segment_run import segment_settings
from unet_core.config import Limits
from unet_core.errors import ConfigError
from unet_core.segmentation import choosing, planning, selection
from unet_core.segmentation.records import Action, RowKind, Status, VolumeRecord
from unet_core.segmentation.selection import SelectionRules, VolumeFacts
from unet_core.segmentation.settings import SegmentSettings
from unet_core.synthetic_studies import write_studies

VOLUME_ROLES = ("thin", "thick", "lung", "contrast", "coronal", "sagittal", "mip")


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    series = write_studies(str(root), n_patients=2, studies_per_patient=2, size=16, seed=7)
    return str(root), series


def _settings(rules: dict | None = None, **kw) -> SegmentSettings:
    return segment_settings(rules=rules or {}, **{"buckets": 5, **kw})


def plan(root: str, s: SegmentSettings, previous: dict | None = None) -> list:
    """Every planned volume of the archive, as the job plans it (previous: volume id -> last row)."""
    rows, _, _ = planning.scan_partition([planning.Unit(root, True)], [], Limits(), False, (), rules=s.rules)
    frags = planning.fragments_of(rows, s.buckets)
    by_bucket = defaultdict(list)
    for f in frags:
        by_bucket[f.bucket].append(f)
    planned = {b: planning.merge_bucket(fs, previous or {}, s) for b, fs in by_bucket.items()}
    found = {b: choosing.contenders(p, s) for b, p in planned.items()} if s.selecting else {}
    for b, d in choosing.decide(s, found).items():
        planned[b] = choosing.demote(planned[b], d.why, s, d.beyond)
    return [p for ps in planned.values() for p in ps]


def outcome(root: str, series, s: SegmentSettings, previous: dict | None = None) -> dict[tuple[str, str], tuple]:
    """(study, role) -> (action, status, error) of its volume."""
    role = {x.series_uid: (x.study_uid, x.role) for x in series}
    out = {}
    for p in plan(root, s, previous):
        if p.kind != RowKind.VOLUME:
            continue
        rec = p.record
        out[role[p.series_uid]] = (p.action, rec.status if rec else "", rec.error if rec else "")
    return out


def selected(result: dict) -> set[str]:
    return {role for (_, role), (action, status, _) in result.items() if action == Action.SEGMENT}


def test_every_role_is_a_volume_without_rules(studies):
    root, series = studies
    result = outcome(root, series, _settings())
    assert selected(result) == set(VOLUME_ROLES)
    assert len(result) == 4 * len(VOLUME_ROLES)  # 4 studies; the scout and the dose report are no volumes


@pytest.mark.parametrize("rules,kept,named", [
    ({"modality": ["MR"]}, set(), "modality CT not in [MR]"),
    ({"image_type_includes": ["ORIGINAL", "PRIMARY"]}, {"thin", "thick", "lung", "contrast"}, "lacks ORIGINAL, PRIMARY"),
    ({"image_type_excludes": ["DERIVED"]}, {"thin", "thick", "lung", "contrast"}, "has DERIVED"),
    ({"orientation": "axial"}, {"thin", "thick", "lung", "contrast", "mip"}, "orientation coronal"),
    ({"orientation": "sagittal"}, {"sagittal"}, "not sagittal within 30 deg"),
    ({"slice_thickness_mm": [0.5, 3.0]}, {"thin", "lung", "contrast", "coronal", "sagittal"},
     "slice_thickness 5 mm not in [0.5, 3]"),
    ({"slice_spacing_mm": [4, 20]}, {"thick", "mip"}, "slice_spacing 1.25 mm not in [4, 20]"),
    ({"min_slices": 20}, {"thin", "lung", "contrast"}, "8 slices, fewer than min_slices 20"),
    ({"max_slices": 10}, {"thick", "mip"}, "32 slices, more than max_slices 10"),
    ({"pixel_spacing_mm": [0.1, 10]}, set(), "pixel_spacing 20 x 20 mm not in [0.1, 10]"),
    ({"body_part": ["chest"]}, set(), "body_part ABDOMEN not in [CHEST]"),
    ({"series_description": "(?i)soft"}, {"thin", "thick"}, "series_description does not match '(?i)soft'"),
    ({"convolution_kernel": "^B7"}, {"lung"}, "convolution_kernel does not match '^B7'"),
    ({"contrast": "yes"}, {"contrast"}, "contrast no (ContrastBolusAgent / ContrastBolusRoute absent)"),
    ({"contrast": "no"}, set(VOLUME_ROLES) - {"contrast"}, "contrast yes"),
])
def test_each_rule_selects_its_series_and_names_itself_for_the_others(studies, rules, kept, named):
    root, series = studies
    result = outcome(root, series, _settings(rules))
    assert selected(result) == kept
    left_out = [e for (action, status, e) in result.values() if action != Action.SEGMENT]
    assert left_out and all(": not selected: " in e for e in left_out), left_out
    assert any(named in e for e in left_out), (named, left_out)
    first_rule = next(iter(rules))
    assert all(first_rule.split("_mm")[0].split("_")[0] in e or "slices" in e for e in left_out), left_out


def test_free_text_is_matched_where_it_is_read_and_never_stored(studies):
    root, _ = studies
    s = _settings({"series_description": "(?i)abdomen"})
    rows, _, _ = planning.scan_partition([planning.Unit(root, True)], [], Limits(), False, (), rules=s.rules)
    stored = json.dumps([r.to_row() for r in rows])
    assert "Abdomen" not in stored and "B30f" not in stored and "Lung" not in stored
    assert {r.text_rules for r in rows if r.kind == "image"} == {s.rules.text_digest()}
    # the same objects, other patterns: their headers are read again (the results would be stale)
    other = _settings({"series_description": "(?i)lung"})
    again, counts, reused = planning.scan_partition([planning.Unit(root, True)], rows, Limits(), False, (),
                                                     rules=other.rules)
    assert not reused and counts.scanned == counts.listed
    same, counts, reused = planning.scan_partition([planning.Unit(root, True)], rows, Limits(), False, (), rules=s.rules)
    assert len(reused) == counts.listed and counts.scanned == 0
    ignored = _settings({"modality": ["CT"]})  # no free-text pattern: rows made with one are read again once
    assert ignored.rules.text_digest() == ""


def test_the_chest_ct_example_keeps_one_thin_soft_series_per_study(studies):
    """The README's worked example: axial, original, 0.5-3 mm, soft kernel, thinnest per study."""
    root, series = studies
    rules = {"modality": ["CT"], "image_type_includes": ["ORIGINAL"], "image_type_excludes": ["LOCALIZER", "DERIVED"],
             "orientation": "axial", "slice_thickness_mm": [0.5, 3.0], "convolution_kernel": "^B[1-4]",
             "contrast": "no", "one_per_study": "thinnest"}
    result = outcome(root, series, _settings(rules))
    kept = [(study, role) for (study, role), (action, _, _) in result.items() if action == Action.SEGMENT]
    assert sorted(role for _, role in kept) == ["thin"] * 4 and len({study for study, _ in kept}) == 4


@pytest.mark.parametrize("mode", ["thinnest", "most_slices"])
def test_one_per_study_with_ties_is_decided_by_the_stated_tie_break(studies, mode):
    """thin, lung and contrast are all 1.25 mm and 32 slices: the smallest volume id wins among
    them, the same on every run; the others name the volume that was kept."""
    root, series = studies
    result = outcome(root, series, _settings({"one_per_study": mode}))
    by_study = defaultdict(list)
    for (study, role), (action, _, error) in result.items():
        by_study[study].append((role, action, error))
    for volumes in by_study.values():
        kept = [role for role, action, _ in volumes if action == Action.SEGMENT]
        assert len(kept) == 1 and kept[0] in ("thin", "lung", "contrast")
        losers = [e for _, action, e in volumes if action != Action.SEGMENT]
        assert len(losers) == len(VOLUME_ROLES) - 1
        assert all("study has a" in e and "(one_per_study: " in e for e in losers)


def test_one_per_study_holds_across_buckets_and_bucket_counts(studies):
    root, series = studies
    picks = []
    for buckets in (1, 2, 7, 64):
        result = outcome(root, series, _settings({"one_per_study": "thinnest"}, buckets=buckets))
        picks.append(sorted(k for k, (action, _, _) in result.items() if action == Action.SEGMENT))
    assert all(p == picks[0] for p in picks) and len(picks[0]) == 4


def test_sample_and_limit_are_deterministic_subsets(studies):
    root, series = studies
    every = selected_ids(root, _settings())
    half = selected_ids(root, _settings(sample=0.5, seed=3))
    assert half == selected_ids(root, _settings(sample=0.5, seed=3)) and half < every
    assert half != selected_ids(root, _settings(sample=0.5, seed=4))
    five = selected_ids(root, _settings(limit=5, seed=3))
    assert len(five) == 5 and five == selected_ids(root, _settings(limit=5, seed=3, buckets=2))
    ranked = sorted(every, key=lambda v: selection.sample_rank(v, 3))
    assert five == set(ranked[:5])


def selected_ids(root: str, s: SegmentSettings) -> set[str]:
    return {p.volume_id for p in plan(root, s) if p.action == Action.SEGMENT}


def test_a_changed_rule_on_a_rerun_redoes_only_the_differences(studies):
    """Rows of the last run: ok volumes stay carried while selected; those the new rules leave out
    become not_selected rows (without reading anything); those they take again are segmented."""
    root, series = studies
    first = _settings({"orientation": "axial"})
    rows = {}
    for p in plan(root, first):
        if p.kind != RowKind.VOLUME:
            continue
        if p.action == Action.SEGMENT:  # as if the run had segmented it
            rec = VolumeRecord(volume_id=p.volume_id, source=p.source, format=p.format, series_uid=p.series_uid,
                               status=Status.OK, fingerprint=p.fingerprint, n_objects=1, model_identity="id-1",
                               selection_facts=p.facts)
        else:
            rec = p.record
        rows[p.volume_id] = rec
    second = _settings({"orientation": "any", "slice_thickness_mm": [0, 3]})
    after = {p.volume_id: p for p in plan(root, second, rows)}
    for vid, p in after.items():
        if p.kind != RowKind.VOLUME:
            continue
        f = p.facts
        was_ok = rows[vid].status == Status.OK
        now = (f.slice_thickness or 0) <= 3
        if was_ok and now:
            assert p.action == Action.CARRY, vid  # unchanged and still selected: not redone
        elif now:
            assert p.action == Action.SEGMENT, vid  # newly selected (the reformats)
        else:
            assert p.action == Action.SET_ASIDE and "slice_thickness" in p.record.to_row()["error"]


def test_rules_are_checked_when_read():
    with pytest.raises(ConfigError, match="unknown key.*slice_thicknes"):
        SelectionRules.from_dict({"slice_thicknes_mm": [1, 2]})
    with pytest.raises(ConfigError, match="orientation must be one of"):
        SelectionRules.from_dict({"orientation": "oblique"})
    with pytest.raises(ConfigError, match=r"series_description pattern '\(' cannot be used \(missing \)"):
        SelectionRules.from_dict({"series_description": "("})
    with pytest.raises(ConfigError, match=r"\[min, max\]"):
        SelectionRules.from_dict({"slice_thickness_mm": [3, 1]})
    with pytest.raises(ConfigError, match="min_slices 9 is above"):
        SelectionRules.from_dict({"min_slices": 9, "max_slices": 3})
    assert SelectionRules.from_dict({"contrast": False}).contrast == "no"  # YAML's no
    bundle = SelectionRules.from_dict({"modality": ["CT"], "orientation": "axial"})
    merged = bundle.merged({"orientation": "coronal"}, "--select")
    assert merged.modality == ("CT",) and merged.orientation == "coronal"


def test_nifti_volumes_answer_geometry_rules_and_the_rest_is_unknown():
    nifti = VolumeFacts(orientation="axial", orientation_angle=0.0, slice_spacing=2.0, n_slices=40,
                        pixel_spacing=(0.8, 0.8), known=selection.NIFTI_KNOWN)
    rules = SelectionRules.from_dict({"modality": ["CT"], "orientation": "axial", "slice_spacing_mm": [1, 3]})
    assert selection.verdict(rules, nifti) is None
    assert selection.unknown_rules(rules, nifti) == ["modality"]
    assert "slice_spacing 2 mm not in [3, 5]" in selection.verdict(
        SelectionRules.from_dict({"slice_spacing_mm": [3, 5]}), nifti)


EVIL = r"^(\w+\s?)+$"  # nested quantifiers: exponential on a backtracking engine


@pytest.mark.parametrize("text, found", [
    ("Abdomen Soft Tissue 2 0 B30f axial thin s", True),  # 41 characters, every one a word or a space
    ("Abdomen Soft Tissue 2.0 B30f axial thin s", False),  # one '.': re would try 2^40 ways
    ("word " * 2000, True),  # 10,000 characters
    ("word " * 1999 + "word!", False),
])
def test_a_pattern_with_nested_quantifiers_takes_milliseconds_on_any_description(text, found):
    rules = SelectionRules.from_dict({"series_description": EVIL}, "--select")
    started = time.perf_counter()
    assert rules.text_matches({"series_description": text}) == (found, None)
    assert time.perf_counter() - started < 0.25  # measured: 0.03 ms at 41 characters, 14 ms at 10,000; re: years


def test_the_evil_pattern_in_a_real_scan_of_a_41_character_description(tmp_path):
    """The issue's hang: a header whose SeriesDescription has 41 characters, scanned with the rule."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SeriesDescription = "Abdomen Soft Tissue 2.0 B30f axial thin s"
    assert len(ds.SeriesDescription) == 41
    ds.save_as(tmp_path / "ct.dcm")
    s = _settings({"series_description": EVIL})
    started = time.perf_counter()
    rows, counts, _ = planning.scan_partition([planning.Unit(str(tmp_path), True)], [], Limits(), False, (),
                                              rules=s.rules)
    assert time.perf_counter() - started < 5  # a header read; the match itself is microseconds
    assert counts.scanned == 1 and [r.text_rules for r in rows] == [s.rules.text_digest()]


@pytest.mark.parametrize("pattern", ["(?i)soft", "^B[1-4]", "B30f$", "soft|lung", r"\d\.\d", "(?i)^abd.*thin",
                                     r"\bB3", "(?P<kernel>B[0-9]+)f", "[[:upper:]]{3}", "Soft", "^Tissue"])
def test_patterns_keep_their_meaning(pattern):
    """Found anywhere unless anchored (re.search), case-sensitive unless (?i): as Python's re says,
    on the header texts of a CT archive (ASCII)."""
    import re

    for text in ("Abdomen Soft Tissue 2.0 B30f axial thin", "LUNG 1.0 B70f", "abdomen SOFT", "", "B3", "ct"):
        assert SelectionRules.from_dict({"convolution_kernel": pattern}).text_matches(
            {"convolution_kernel": text})[1] == (re.search(pattern.replace("[[:upper:]]", "[A-Z]"), text) is not None), \
            (pattern, text)


@pytest.mark.parametrize("pattern, why", [
    (r"(B\d)\1", "invalid escape sequence"),  # a backreference
    (r"Soft(?= Tissue)", "invalid perl operator"),  # look-ahead
    (r"(?<!Lung )B30", "invalid perl operator"),  # look-behind
    (r"B30f\Z", "invalid escape sequence"),  # Python's end of text; RE2 spells it \z
])
def test_a_pattern_re2_cannot_run_is_refused_at_load_naming_the_rule_and_the_pattern(pattern, why):
    import re

    with pytest.raises(ConfigError) as refused:
        SelectionRules.from_dict({"modality": ["CT"], "series_description": pattern}, "model/bundle.json input_rules")
    message = str(refused.value)
    assert message.startswith(f"model/bundle.json input_rules: series_description pattern {pattern!r} cannot be "
                              f"used ({why}")
    assert "backreferences and look-around are not supported" in message
    with pytest.raises(ConfigError, match=re.escape(f"--select: convolution_kernel pattern {pattern!r}")):
        SelectionRules.from_dict({}).merged({"convolution_kernel": pattern}, "--select")


def test_the_patterns_digests_are_unchanged():
    """The series index keeps the digest of the patterns' text: moving to RE2 must not make every
    earlier index stale (the values below are those of the `re` version)."""
    rules = SelectionRules.from_dict({"series_description": "(?i)abdomen", "convolution_kernel": "^B[1-4]"})
    assert rules.text_digest() == "b09b8de3f2c28d87"
    assert rules.digest() == "b09b8de3f2c28d87"
