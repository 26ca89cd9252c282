"""The selection rules applied to a run's planned volumes (the rules themselves: selection.py).

    select(planned, s)              per bucket, at planning: the rules and --sample; a volume left
                                    out becomes a skipped row, `not_selected`, naming the rule
    contenders(planned, s)          per bucket: what the run-wide choices need of its volumes
    decide(s, contenders)           at the driver: one_per_study across the archive (the series of
                                    a study may sit in several buckets) and --limit
    demote(planned | rows, reasons) the volumes those choices leave out, as not_selected rows

What the driver holds for `decide` is one small tuple per selected volume (never per object):
about 150 bytes, 30 MB for 200,000 volumes.
"""
from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field, replace

from unet_core.errors import ErrorType
from unet_core.segmentation import selection
from unet_core.segmentation.records import Action, Format, PlannedVolume, RowKind, Status, VolumeRecord
from unet_core.segmentation.selection import Rule
from unet_core.segmentation.settings import SegmentSettings


def facts_of(members, fmt: Format) -> str:
    """The selection facts of a volume planned from its members (a grouping.VolumeMembers)."""
    if fmt == Format.NIFTI:
        return selection.facts_of_nifti(members.headers[0]).to_json()
    n_slices = sum(max(1, h.frames) for h in members.headers)
    return selection.facts_of_dicom(members.headers, n_slices).to_json()


def stored_facts(prev: VolumeRecord | None, s: SegmentSettings) -> selection.VolumeFacts | None:
    """A previous row's selection facts, when they were made with this run's free-text patterns."""
    if prev is None or not prev.selection_facts or (prev.text_rules or "") != s.rules.text_digest():
        return None
    return selection.VolumeFacts.from_json(prev.selection_facts)


def was_not_selected(prev: VolumeRecord | None, fp: str) -> bool:
    return prev is not None and prev.fingerprint == fp and prev.error_type == ErrorType.NOT_SELECTED


def _status(p: PlannedVolume) -> str:
    return json.loads(p.record)["status"] if p.record else ""


def _candidate(p: PlannedVolume) -> bool:
    """A volume the rules decide on: to segment, or carried (ok, or left out by the last rules)."""
    if p.kind != RowKind.VOLUME or not p.facts:
        return False
    return p.action == Action.SEGMENT or (p.action == Action.CARRY and _status(p) in (Status.OK, Status.SKIPPED))


def select(planned: list[PlannedVolume], s: SegmentSettings) -> list[PlannedVolume]:
    """The rules and --sample over one bucket's planned volumes. A carried row the rules leave out
    again gets this run's message; a volume the rules take again after leaving it out last time
    was planned from its members (planning.merge_bucket), so it is segmented."""
    rules = s.rules
    why: dict[str, Why] = {}
    for p in planned:
        if not _candidate(p):
            continue
        if refused := selection.refusal(rules, selection.VolumeFacts.from_json(p.facts)):
            why[p.volume_id] = Why(*refused)
        elif s.sample is not None and not selection.in_sample(p.volume_id, s.sample, s.seed):
            why[p.volume_id] = Why(Rule.SAMPLE, f"not in the --sample {s.sample:g} (seed {s.seed})")
    return demote(planned, why, s)


def contenders(planned: list[PlannedVolume], s: SegmentSettings) -> dict:
    """{"study": [[volume id, study, frame of reference, thickness, spacing, slices, bucket]] of
    every selected volume (one_per_study); "limit": [rank, volume id] of the `limit` lowest ranks
    among the volumes to segment, and "limit_max": the highest rank among them (--limit)}."""
    out: dict = {}
    if s.rules.one_per_study != "all":
        out["study"] = []
        for p in planned:
            if _candidate(p) and _status(p) != Status.SKIPPED:
                f = selection.VolumeFacts.from_json(p.facts)
                out["study"].append([p.volume_id, f.study_uid, f.frame_of_reference, f.slice_thickness,
                                     f.slice_spacing, f.n_slices, p.bucket])
    if s.limit is not None:
        ranked = [(selection.sample_rank(p.volume_id, s.seed), p.volume_id) for p in planned if p.action == Action.SEGMENT]
        out["limit"] = [list(r) for r in heapq.nsmallest(s.limit, ranked)]
        out["limit_max"] = max((r for r, _ in ranked), default=-1.0)
    return out


@dataclass(frozen=True)
class Why:
    """Why a volume is left out: the rule, and the message its row carries."""

    rule: Rule
    reason: str


@dataclass
class Demotion:
    """What the run-wide choices leave out of one bucket: volumes by id, and (--limit) every
    volume to segment whose rank is above `beyond`."""

    why: dict[str, Why] = field(default_factory=dict)
    beyond: float | None = None


def decide(s: SegmentSettings, found: dict[int, dict]) -> dict[int, Demotion]:
    """The run-wide choices over every bucket's contenders ({bucket: contenders}). one_per_study
    first; --limit then keeps the `limit` lowest ranks among the volumes to segment that are left."""
    out: dict[int, Demotion] = {}
    if s.rules.one_per_study != "all":
        rows = [r for c in found.values() for r in c.get("study", [])]
        facts = [(r[0], selection.VolumeFacts(study_uid=r[1], frame_of_reference=r[2], slice_thickness=r[3],
                                              slice_spacing=r[4], n_slices=r[5])) for r in rows]
        bucket = {r[0]: r[6] for r in rows}
        for vid, reason in selection.one_per_study(s.rules, facts).items():
            out.setdefault(bucket[vid], Demotion()).why[vid] = Why(Rule.ONE_PER_STUDY, reason)
    if s.limit is not None:
        left_out = {vid for d in out.values() for vid in d.why}
        ranks = sorted(r for c in found.values() for r, vid in c.get("limit", []) if vid not in left_out)
        if len(ranks) > s.limit:  # more to segment than the limit: keep the lowest ranks
            cutoff = ranks[s.limit - 1]
            for b, c in found.items():
                if c.get("limit_max", -1.0) > cutoff:
                    out.setdefault(b, Demotion()).beyond = cutoff
    return out


def not_selected_record(rec: VolumeRecord, why: Why, facts: str, s: SegmentSettings) -> VolumeRecord:
    """The skipped row of a volume left out (`rec` gives its identity): its facts, none of its outputs."""
    n_slices = selection.VolumeFacts.from_json(facts).n_slices if facts else 0
    return VolumeRecord(
        volume_id=rec.volume_id, source=rec.source, format=rec.format, series_uid=rec.series_uid,
        status=Status.SKIPPED, error=f"{rec.source}: not selected: {why.reason}", error_type=ErrorType.NOT_SELECTED,
        rule=why.rule, fingerprint=rec.fingerprint, n_objects=rec.n_objects, n_slices=n_slices,
        model=s.model_name, model_identity=s.model_identity, selection_facts=facts, text_rules=s.rules.text_digest())


def demote(planned: list[PlannedVolume], why: dict[str, Why], s: SegmentSettings,
           beyond: float | None = None) -> list[PlannedVolume]:
    """Planned volumes with those named in `why`, and those to segment ranked above `beyond`
    (--limit), turned into not_selected rows (set aside)."""
    out = []
    for p in planned:
        reason = why.get(p.volume_id)
        if reason is None and beyond is not None and p.action == Action.SEGMENT and (
                selection.sample_rank(p.volume_id, s.seed) > beyond):
            reason = Why(Rule.LIMIT, f"beyond the --limit {s.limit} (seed {s.seed})")
        if reason is None:
            out.append(p)
            continue
        n_objects = len(json.loads(p.members)) if p.action == Action.SEGMENT else json.loads(p.record).get("n_objects", 0)
        ident = VolumeRecord(volume_id=p.volume_id, source=p.source, format=p.format, series_uid=p.series_uid,
                             status=Status.SKIPPED, fingerprint=p.fingerprint, n_objects=int(n_objects or 0))
        rec = not_selected_record(ident, reason, p.facts, s)
        out.append(replace(p, action=Action.SET_ASIDE, members="[]", record=json.dumps(rec.to_row())))
    return out


def demote_rows(rows: list[VolumeRecord], why: dict[str, Why], s: SegmentSettings) -> list[VolumeRecord]:
    """Volume-table rows with those named in `why` turned into not_selected rows."""
    return [not_selected_record(r, why[r.volume_id], r.selection_facts or "", s) if r.volume_id in why else r
            for r in rows]
