"""The selection rules applied to a run's planned volumes (the rules themselves: selection.py).

    select(planned, s)              per bucket, at planning: the rules and --sample; a volume left
                                    out becomes a skipped row, `not_selected`, naming the rule
    contenders(planned, s)          per bucket: what the run-wide choices need of its volumes
    decide(s, contenders)           at the driver: one_per_study across the archive (the series of
                                    a study may sit in several buckets) and --limit
    left_out(volume id, action, ...) whether those choices leave one planned volume out, and why
    demote(planned | rows, reasons) the volumes those choices leave out, as not_selected rows

What the driver holds for `decide` is one small tuple per selected volume (never per object):
about 150 bytes, 30 MB for 200,000 volumes.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace

from unet_core.errors import ErrorType
from unet_core.segmentation import selection
from unet_core.segmentation.records import Action, Format, PlannedVolume, Record, RowKind, Status, VolumeRecord
from unet_core.segmentation.selection import Rule, VolumeFacts
from unet_core.segmentation.settings import SegmentSettings


def facts_of(members, fmt: Format) -> VolumeFacts:
    """The selection facts of a volume planned from its members (a grouping.VolumeMembers)."""
    if fmt == Format.NIFTI:
        return selection.facts_of_nifti(members.headers[0])
    n_slices = sum(max(1, h.frames) for h in members.headers)
    return selection.facts_of_dicom(members.headers, n_slices)


def stored_facts(prev: VolumeRecord | None, s: SegmentSettings) -> VolumeFacts | None:
    """A previous row's selection facts, when they were made with this run's free-text patterns."""
    if prev is None or prev.selection_facts is None or (prev.text_rules or "") != s.rules.text_digest():
        return None
    return prev.selection_facts


def was_not_selected(prev: VolumeRecord | None, fp: str) -> bool:
    return prev is not None and prev.fingerprint == fp and prev.error_type == ErrorType.NOT_SELECTED


def _status(p: PlannedVolume) -> Status | None:
    return p.record.status if p.record is not None else None


def _candidate(p: PlannedVolume) -> bool:
    """A volume the rules decide on: to segment, or carried (ok, or left out by the last rules)."""
    if p.kind != RowKind.VOLUME or p.facts is None:
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
        if refused := selection.refusal(rules, p.facts):
            why[p.volume_id] = Why(*refused)
        elif s.sample is not None and not selection.in_sample(p.volume_id, s.sample, s.seed):
            why[p.volume_id] = Why(Rule.SAMPLE, f"not in the --sample {s.sample:g} (seed {s.seed})")
    return demote(planned, why, s)


@dataclass
class StudyContender(Record):
    """A selected volume, with the facts one_per_study chooses by."""

    volume_id: str
    bucket: int
    study_uid: str = ""
    frame_of_reference: str = ""
    slice_thickness: float | None = None
    slice_spacing: float | None = None
    n_slices: int = 0

    def facts(self) -> VolumeFacts:
        return VolumeFacts(study_uid=self.study_uid, frame_of_reference=self.frame_of_reference,
                           slice_thickness=self.slice_thickness, slice_spacing=self.slice_spacing,
                           n_slices=self.n_slices)


@dataclass
class Ranked(Record):
    """A volume to segment and its --limit rank (selection.sample_rank)."""

    rank: float
    volume_id: str


@dataclass
class Contenders(Record):
    """What one bucket tells the driver for the run-wide choices: `study`, every selected volume
    (one_per_study; empty when the rule is "all"); `limit`, the `limit` lowest ranks among the
    volumes to segment, and `limit_max` the highest rank among them (--limit; -1 without one)."""

    study: tuple[StudyContender, ...] = ()
    limit: tuple[Ranked, ...] = ()
    limit_max: float = -1.0


def contenders(planned: list[PlannedVolume], s: SegmentSettings) -> Contenders:
    """One bucket's contenders for the run-wide choices (one_per_study, --limit)."""
    study: list[StudyContender] = []
    if s.rules.one_per_study != "all":
        for p in planned:
            if _candidate(p) and _status(p) != Status.SKIPPED and p.facts is not None:
                f = p.facts
                study.append(StudyContender(p.volume_id, p.bucket, f.study_uid, f.frame_of_reference,
                                            f.slice_thickness, f.slice_spacing, f.n_slices))
    if s.limit is None:
        return Contenders(tuple(study))
    ranked = [Ranked(selection.sample_rank(p.volume_id, s.seed), p.volume_id)
              for p in planned if p.action == Action.SEGMENT]
    return Contenders(tuple(study), tuple(heapq.nsmallest(s.limit, ranked, key=lambda r: (r.rank, r.volume_id))),
                      max((r.rank for r in ranked), default=-1.0))


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


def decide(s: SegmentSettings, found: dict[int, Contenders]) -> dict[int, Demotion]:
    """The run-wide choices over every bucket's contenders ({bucket: contenders}). one_per_study
    first; --limit then keeps the `limit` lowest ranks among the volumes to segment that are left."""
    out: dict[int, Demotion] = {}
    if s.rules.one_per_study != "all":
        rows = [r for c in found.values() for r in c.study]
        facts = [(r.volume_id, r.facts()) for r in rows]
        bucket = {r.volume_id: r.bucket for r in rows}
        for vid, reason in selection.one_per_study(s.rules, facts).items():
            out.setdefault(bucket[vid], Demotion()).why[vid] = Why(Rule.ONE_PER_STUDY, reason)
    if s.limit is not None:
        left_out = {vid for d in out.values() for vid in d.why}
        ranks = sorted(r.rank for c in found.values() for r in c.limit if r.volume_id not in left_out)
        if len(ranks) > s.limit:  # more to segment than the limit: keep the lowest ranks
            cutoff = ranks[s.limit - 1]
            for b, c in found.items():
                if c.limit_max > cutoff:
                    out.setdefault(b, Demotion()).beyond = cutoff
    return out


def not_selected_record(rec: VolumeRecord, why: Why, facts: VolumeFacts | None, s: SegmentSettings) -> VolumeRecord:
    """The skipped row of a volume left out (`rec` gives its identity): its facts, none of its outputs."""
    n_slices = facts.n_slices if facts is not None else 0
    return VolumeRecord(
        volume_id=rec.volume_id, source=rec.source, format=rec.format, series_uid=rec.series_uid,
        status=Status.SKIPPED, error=f"{rec.source}: not selected: {why.reason}", error_type=ErrorType.NOT_SELECTED,
        rule=why.rule, fingerprint=rec.fingerprint, n_objects=rec.n_objects, n_slices=n_slices,
        model=s.model_name, model_identity=s.model_identity, selection_facts=facts, text_rules=s.rules.text_digest())


def left_out(volume_id: str, action: Action, why: dict[str, Why], s: SegmentSettings,
             beyond: float | None = None) -> Why | None:
    """Why the run-wide choices leave a planned volume out: named in `why`, or a volume to segment
    ranked above `beyond` (--limit); None when they keep it."""
    reason = why.get(volume_id)
    if reason is None and beyond is not None and action == Action.SEGMENT and (
            selection.sample_rank(volume_id, s.seed) > beyond):
        reason = Why(Rule.LIMIT, f"beyond the --limit {s.limit} (seed {s.seed})")
    return reason


def demote(planned: list[PlannedVolume], why: dict[str, Why], s: SegmentSettings,
           beyond: float | None = None) -> list[PlannedVolume]:
    """Planned volumes with those `left_out` turned into not_selected rows (set aside)."""
    out = []
    for p in planned:
        reason = left_out(p.volume_id, p.action, why, s, beyond)
        if reason is None:
            out.append(p)
            continue
        n_objects = len(p.members) if p.action == Action.SEGMENT else (p.record.n_objects if p.record else 0)
        ident = VolumeRecord(volume_id=p.volume_id, source=p.source, format=p.format, series_uid=p.series_uid,
                             status=Status.SKIPPED, fingerprint=p.fingerprint, n_objects=int(n_objects or 0))
        rec = not_selected_record(ident, reason, p.facts, s)
        out.append(replace(p, action=Action.SET_ASIDE, members=(), record=rec))
    return out


def demote_rows(rows: list[VolumeRecord], why: dict[str, Why], s: SegmentSettings) -> list[VolumeRecord]:
    """Volume-table rows with those named in `why` turned into not_selected rows."""
    return [not_selected_record(r, why[r.volume_id], r.selection_facts, s) if r.volume_id in why else r
            for r in rows]
