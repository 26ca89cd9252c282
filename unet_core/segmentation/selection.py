"""Which volumes of an archive a run segments: selection rules, evaluated at planning from headers
before any pixel is read.

    SelectionRules.from_dict(d, where)  the rules (`--select FILE.yaml`, `--config`, a bundle's
                                        "input_rules"); unknown keys and bad values are refused
    facts_of_dicom(headers, ...)        what a DICOM volume's headers say, as VolumeFacts
    facts_of_nifti(row)                 what a NIfTI header says (the rest is unknown)
    refusal(rules, facts)               None (selected) or (the first Rule failed, why, with the values)
    verdict(rules, facts)               just the why of `refusal`
    one_per_study(rules, candidates)    the volumes that lose to another series of their study
    in_sample(volume_id, fraction, seed), sample_rank(volume_id, seed)   --sample and --limit

Every key is optional; the rules combine with AND. The reference is docs/design.md, "Selection
rules". Free-text attributes (SeriesDescription, ConvolutionKernel) are matched where a header is
read and only the result is kept (`text_matches`): their text is never stored. A change of those
two patterns therefore reads the headers again (the series index keeps the patterns' digest);
any other change of the rules is decided from stored facts, without reading anything.
"""
from __future__ import annotations

import enum
import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable

import re2

from unet_core.errors import ConfigError

ORIENTATIONS = ("axial", "coronal", "sagittal", "any")
DEFAULT_ORIENTATION_TOLERANCE_DEG = 30.0  # the slice normal's angle to the patient axis
ONE_PER_STUDY = ("all", "thinnest", "most_slices")
CONTRAST = ("any", "yes", "no")
_AXES = ("sagittal", "coronal", "axial")  # the patient axis (x, y, z) a slice normal points along


def _range(value: Any, key: str, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} must be [min, max] in mm (got {value!r})") from None
    if not (0 <= lo <= hi) or math.isinf(hi):
        raise ConfigError(f"{where}: {key} must be [min, max] with 0 <= min <= max (got {value!r})")
    return lo, hi


def _codes(value: Any, key: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in values):
        raise ConfigError(f"{where}: {key} must be a list of values (got {value!r})")
    return tuple(v.strip().upper() for v in values)


def _pattern(value: Any, key: str, where: str) -> str | None:
    """A free-text rule's pattern, refused at load when RE2 cannot run it (ConfigError naming the
    rule and the pattern). The pattern string itself is kept (digests are of the text)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a regular expression (got {value!r})")
    try:
        _compiled(value)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ConfigError(
            f"{where}: {key} pattern {value!r} cannot be used ({reason}). Selection patterns run on RE2, which "
            "takes linear time on any header text: backreferences and look-around are not supported, and the end "
            "of the text is \\z (or $), not \\Z") from None
    return value


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is reported once, as a ConfigError
    return options


_RE2_OPTIONS = _re2_options()


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str):
    """RE2, not `re`: patterns come from users and model bundles, and a backtracking engine takes
    exponential time on some of them (`^(\\w+\\s?)+$` against 41 characters ran for minutes). RE2's
    search takes time linear in the text, and keeps `re.search`'s meaning: found anywhere unless
    anchored, inline flags such as (?i) as in Python; `\\w`, `\\d`, `\\s` and `\\b` are ASCII classes."""
    return re2.compile(pattern, _RE2_OPTIONS)


def _count(value: Any, key: str, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {key} must be a whole number >= 1 (got {value!r})")
    return value


def _choice(value: Any, key: str, where: str, allowed: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if isinstance(value, bool):  # YAML reads yes / no as booleans
        value = "yes" if value else "no"
    if value not in allowed:
        raise ConfigError(f"{where}: {key} must be one of {', '.join(allowed)} (got {value!r})")
    return value


class Rule(enum.StrEnum):
    """What left a volume out (a not_selected row's `rule`): a selection rule, or the run's
    --sample, --limit or one_per_study. The values are the names summaries and reports count by."""

    NONE = ""  # a row that was not left out
    MODALITY = "modality"
    IMAGE_TYPE = "image_type"  # image_type_includes / image_type_excludes
    ORIENTATION = "orientation"
    SLICE_THICKNESS = "slice_thickness"
    SLICE_SPACING = "slice_spacing"
    SLICES = "slices"  # min_slices / max_slices
    PIXEL_SPACING = "pixel_spacing"
    BODY_PART = "body_part"
    SERIES_DESCRIPTION = "series_description"
    CONVOLUTION_KERNEL = "convolution_kernel"
    CONTRAST = "contrast"
    ONE_PER_STUDY = "one_per_study"
    SAMPLE = "sample"
    LIMIT = "limit"
    UNKNOWN = "unknown"  # a layout-3 row whose message names no rule this version knows


@dataclass(frozen=True)
class SelectionRules:
    modality: tuple[str, ...] = ()
    image_type_includes: tuple[str, ...] = ()
    image_type_excludes: tuple[str, ...] = ()
    orientation: str = "any"
    orientation_tolerance_deg: float = DEFAULT_ORIENTATION_TOLERANCE_DEG
    slice_thickness_mm: tuple[float, float] | None = None
    slice_spacing_mm: tuple[float, float] | None = None
    min_slices: int | None = None
    max_slices: int | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    body_part: tuple[str, ...] = ()
    series_description: str | None = None  # a regular expression, searched (re.search's meaning, on RE2)
    convolution_kernel: str | None = None  # a regular expression, searched
    contrast: str = "any"
    one_per_study: str = "all"

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "the selection rules") -> SelectionRules:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(sorted(known))}")
        tolerance = d.get("orientation_tolerance_deg", DEFAULT_ORIENTATION_TOLERANCE_DEG)
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance <= 90:
            raise ConfigError(f"{where}: orientation_tolerance_deg must be a number of degrees in [0, 90]")
        rules = cls(
            modality=_codes(d.get("modality"), "modality", where),
            image_type_includes=_codes(d.get("image_type_includes"), "image_type_includes", where),
            image_type_excludes=_codes(d.get("image_type_excludes"), "image_type_excludes", where),
            orientation=_choice(d.get("orientation"), "orientation", where, ORIENTATIONS, "any"),
            orientation_tolerance_deg=float(tolerance),
            slice_thickness_mm=_range(d.get("slice_thickness_mm"), "slice_thickness_mm", where),
            slice_spacing_mm=_range(d.get("slice_spacing_mm"), "slice_spacing_mm", where),
            min_slices=_count(d.get("min_slices"), "min_slices", where),
            max_slices=_count(d.get("max_slices"), "max_slices", where),
            pixel_spacing_mm=_range(d.get("pixel_spacing_mm"), "pixel_spacing_mm", where),
            body_part=_codes(d.get("body_part"), "body_part", where),
            series_description=_pattern(d.get("series_description"), "series_description", where),
            convolution_kernel=_pattern(d.get("convolution_kernel"), "convolution_kernel", where),
            contrast=_choice(d.get("contrast"), "contrast", where, CONTRAST, "any"),
            one_per_study=_choice(d.get("one_per_study"), "one_per_study", where, ONE_PER_STUDY, "all"),
        )
        if rules.min_slices and rules.max_slices and rules.min_slices > rules.max_slices:
            raise ConfigError(f"{where}: min_slices {rules.min_slices} is above max_slices {rules.max_slices}")
        return rules

    def to_dict(self) -> dict:
        """The rules that are set (defaults left out), as plain values: what status and the
        summary show, and what `from_dict` reads back."""
        default = SelectionRules()
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v != getattr(default, f.name):
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def merged(self, override: dict | None, where: str) -> SelectionRules:
        """These rules (a bundle's) with the keys of `override` (--select) replacing theirs."""
        return SelectionRules.from_dict({**self.to_dict(), **(override or {})}, where)

    @property
    def empty(self) -> bool:
        return not self.to_dict()

    def digest(self) -> str:
        return _digest(self.to_dict())

    def text_digest(self) -> str:
        """Of the free-text patterns only: what the series index's match results were made with."""
        return _text_digest(self.series_description, self.convolution_kernel)

    def text_matches(self, texts: dict[str, str]) -> tuple[bool | None, bool | None]:
        """(description matches, kernel matches) of one header's text; None where no pattern is set."""
        return (_search(self.series_description, texts.get("series_description", "")),
                _search(self.convolution_kernel, texts.get("convolution_kernel", "")))


def _search(pattern: str | None, text: str) -> bool | None:
    """Whether `pattern` is found anywhere in `text` (re.search's meaning), in linear time."""
    return None if pattern is None else _found(pattern, text or "")


@functools.lru_cache(maxsize=4096)
def _found(pattern: str, text: str) -> bool:
    """Asked once per object scanned, of the few texts a series repeats in every object (a kernel,
    a description): each pair is searched once (the re2 wrapper costs more per call than re's)."""
    return _compiled(pattern).search(text) is not None


@functools.lru_cache(maxsize=16)
def _text_digest(description: str | None, kernel: str | None) -> str:
    """Asked for once per object scanned: hashed once per pair of patterns."""
    if description is None and kernel is None:
        return ""
    return _digest({"series_description": description, "convolution_kernel": kernel})


def _digest(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# ---- what a volume's headers say -------------------------------------------------------------------
@dataclass(frozen=True)
class VolumeFacts:
    """The values rules are decided on. None (or "" for text) where the headers do not say;
    `known` lists the rule keys the volume's format can answer at all."""

    modality: str = ""
    image_type: tuple[str, ...] = ()
    orientation: str = ""  # axial / coronal / sagittal: the axis the slice normal is nearest
    orientation_angle: float | None = None  # degrees between the slice normal and that axis
    slice_thickness: float | None = None
    slice_spacing: float | None = None
    n_slices: int = 0
    pixel_spacing: tuple[float, float] | None = None
    body_part: str = ""
    description_match: bool | None = None
    kernel_match: bool | None = None
    contrast: bool | None = None
    study_uid: str = ""
    frame_of_reference: str = ""
    rows: int = 0
    columns: int = 0
    known: tuple[str, ...] = field(default_factory=lambda: RULE_KEYS)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @property
    def decoded_bytes(self) -> int:
        """The volume's voxels as the pipeline holds them (float32)."""
        return self.n_slices * self.rows * self.columns * 4

    @classmethod
    def from_json(cls, text: str) -> VolumeFacts | None:
        if not text:
            return None
        d = {k: v for k, v in json.loads(text).items() if k in _FACT_FIELDS}  # facts of another version
        for key in ("image_type", "known"):
            d[key] = tuple(d[key])
        if d.get("pixel_spacing") is not None:
            d["pixel_spacing"] = tuple(d["pixel_spacing"])
        return cls(**d)


_FACT_FIELDS = {f.name for f in fields(VolumeFacts)}
RULE_KEYS = ("modality", "image_type_includes", "image_type_excludes", "orientation", "slice_thickness_mm",
             "slice_spacing_mm", "min_slices", "max_slices", "pixel_spacing_mm", "body_part", "series_description",
             "convolution_kernel", "contrast", "one_per_study")
NIFTI_KNOWN = ("orientation", "slice_spacing_mm", "min_slices", "max_slices", "pixel_spacing_mm")


def orientation_of(cosines: Iterable[float] | None) -> tuple[str, float | None]:
    """(axis name, angle in degrees) of the slice normal of ImageOrientationPatient's cosines."""
    if not cosines:
        return "", None
    c = list(cosines)
    row, col = c[:3], c[3:6]
    n = (row[1] * col[2] - row[2] * col[1], row[2] * col[0] - row[0] * col[2], row[0] * col[1] - row[1] * col[0])
    norm = math.sqrt(sum(v * v for v in n))
    if norm == 0:
        return "", None
    axis = max(range(3), key=lambda i: abs(n[i]))
    return _AXES[axis], math.degrees(math.acos(min(1.0, abs(n[axis]) / norm)))


def spacing_of(positions: list[tuple[float, float, float]], cosines: Iterable[float] | None) -> float | None:
    """The median distance between neighbouring slices along the normal (None for one slice)."""
    if len(positions) < 2 or not cosines:
        return None
    c = list(cosines)
    row, col = c[:3], c[3:6]
    n = (row[1] * col[2] - row[2] * col[1], row[2] * col[0] - row[0] * col[2], row[0] * col[1] - row[1] * col[0])
    d = sorted(sum(p[i] * n[i] for i in range(3)) for p in positions)
    gaps = sorted(b - a for a, b in zip(d, d[1:], strict=False))
    return round(gaps[len(gaps) // 2], 4)


def _median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def facts_of_dicom(headers: list, n_slices: int) -> VolumeFacts:
    """From a DICOM volume's member headers (ObjectRows of one series and geometry)."""
    first = headers[0]
    axis, angle = orientation_of(first.orientation)
    positions = [h.position for h in headers if h.position is not None]
    spacing = spacing_of(positions, first.orientation) if len(headers) > 1 else None
    matches = [h.description_match for h in headers if h.description_match is not None]
    kernels = [h.kernel_match for h in headers if h.kernel_match is not None]
    return VolumeFacts(
        modality=first.modality, image_type=tuple(v for v in first.image_type.split("\\") if v),
        orientation=axis, orientation_angle=None if angle is None else round(angle, 2),
        slice_thickness=_median([h.slice_thickness for h in headers]), slice_spacing=spacing, n_slices=n_slices,
        pixel_spacing=tuple(first.pixel_spacing) if first.pixel_spacing else None, body_part=first.body_part,
        description_match=(all(matches) if matches else None), kernel_match=(all(kernels) if kernels else None),
        contrast=any(h.contrast for h in headers), study_uid=first.study_uid,
        frame_of_reference=first.frame_of_reference, rows=first.rows, columns=first.columns)


def facts_of_nifti(row) -> VolumeFacts:
    """From a NIfTI header as the scan read it (geometry only; the rest is unknown)."""
    axis, angle = orientation_of(row.orientation)
    return VolumeFacts(orientation=axis, orientation_angle=None if angle is None else round(angle, 2),
                       slice_spacing=row.slice_thickness, n_slices=row.frames,
                       pixel_spacing=tuple(row.pixel_spacing) if row.pixel_spacing else None, rows=row.rows,
                       columns=row.columns, known=NIFTI_KNOWN)


# ---- the verdict -------------------------------------------------------------------------------------
def _mm(v: float) -> str:
    return f"{v:g}"


def _in(value: float | None, bounds: tuple[float, float], name: str) -> str | None:
    if value is None:
        return f"{name} unknown (not in the header), the rules ask for [{_mm(bounds[0])}, {_mm(bounds[1])}] mm"
    if not bounds[0] <= value <= bounds[1]:
        return f"{name} {_mm(value)} mm not in [{_mm(bounds[0])}, {_mm(bounds[1])}]"
    return None


def refusal(rules: SelectionRules, f: VolumeFacts) -> tuple[Rule, str] | None:
    """None when the volume passes every rule its format can answer; else the first rule it
    fails and why, with the values (never free text: a description or kernel is named by its rule)."""
    known = set(f.known)
    checks: list[tuple[Rule, str | None]] = []
    if rules.modality and "modality" in known:
        checks.append((Rule.MODALITY, None if f.modality.upper() in rules.modality else
                      f"modality {f.modality or 'unknown'} not in [{', '.join(rules.modality)}]"))
    if rules.image_type_includes and "image_type_includes" in known:
        missing = [v for v in rules.image_type_includes if v not in f.image_type]
        checks.append((Rule.IMAGE_TYPE, f"image_type {'/'.join(f.image_type) or 'unknown'} lacks {', '.join(missing)}"
                       if missing else None))
    if rules.image_type_excludes and "image_type_excludes" in known:
        present = [v for v in rules.image_type_excludes if v in f.image_type]
        checks.append((Rule.IMAGE_TYPE, f"image_type {'/'.join(f.image_type)} has {', '.join(present)}" if present else None))
    if rules.orientation != "any" and "orientation" in known:
        if not f.orientation:
            checks.append((Rule.ORIENTATION, f"orientation unknown (no ImageOrientationPatient), the rules ask for {rules.orientation}"))
        elif f.orientation != rules.orientation or (f.orientation_angle or 0) > rules.orientation_tolerance_deg:
            checks.append((Rule.ORIENTATION, f"orientation {f.orientation} ({f.orientation_angle:g} deg off the axis), not "
                          f"{rules.orientation} within {rules.orientation_tolerance_deg:g} deg"))
    if rules.slice_thickness_mm and "slice_thickness_mm" in known:
        checks.append((Rule.SLICE_THICKNESS, _in(f.slice_thickness, rules.slice_thickness_mm, "slice_thickness")))
    if rules.slice_spacing_mm and "slice_spacing_mm" in known:
        checks.append((Rule.SLICE_SPACING, _in(f.slice_spacing, rules.slice_spacing_mm, "slice_spacing")))
    if rules.min_slices and "min_slices" in known and f.n_slices < rules.min_slices:
        checks.append((Rule.SLICES, f"{f.n_slices} slices, fewer than min_slices {rules.min_slices}"))
    if rules.max_slices and "max_slices" in known and f.n_slices > rules.max_slices:
        checks.append((Rule.SLICES, f"{f.n_slices} slices, more than max_slices {rules.max_slices}"))
    if rules.pixel_spacing_mm and "pixel_spacing_mm" in known:
        lo, hi = rules.pixel_spacing_mm
        if f.pixel_spacing is None:
            checks.append((Rule.PIXEL_SPACING, f"pixel_spacing unknown, the rules ask for [{_mm(lo)}, {_mm(hi)}] mm"))
        elif not all(lo <= v <= hi for v in f.pixel_spacing):
            checks.append((Rule.PIXEL_SPACING,
                           f"pixel_spacing {' x '.join(_mm(v) for v in f.pixel_spacing)} mm not in [{_mm(lo)}, {_mm(hi)}]"))
    if rules.body_part and "body_part" in known:
        checks.append((Rule.BODY_PART, None if f.body_part.upper() in rules.body_part else
                      f"body_part {f.body_part or 'unknown'} not in [{', '.join(rules.body_part)}]"))
    if rules.series_description is not None and "series_description" in known and not f.description_match:
        checks.append((Rule.SERIES_DESCRIPTION, f"series_description does not match {rules.series_description!r}"))
    if rules.convolution_kernel is not None and "convolution_kernel" in known and not f.kernel_match:
        checks.append((Rule.CONVOLUTION_KERNEL, f"convolution_kernel does not match {rules.convolution_kernel!r}"))
    if rules.contrast != "any" and "contrast" in known:
        want = rules.contrast == "yes"
        if bool(f.contrast) != want:
            checks.append((Rule.CONTRAST, f"contrast {'yes' if f.contrast else 'no'} (ContrastBolusAgent / ContrastBolusRoute "
                          f"{'present' if f.contrast else 'absent'}), the rules ask for {rules.contrast}"))
    return next(((rule, why) for rule, why in checks if why), None)


def verdict(rules: SelectionRules, f: VolumeFacts) -> str | None:
    """None when the volume is selected; else why not (`refusal`'s message)."""
    found = refusal(rules, f)
    return found[1] if found else None


def unknown_rules(rules: SelectionRules, f: VolumeFacts) -> list[str]:
    """The rules set that this volume's format cannot answer (a NIfTI file has no modality)."""
    return [k for k in rules.to_dict() if k in RULE_KEYS and k not in f.known]


def _thickness(f: VolumeFacts) -> float:
    for v in (f.slice_thickness, f.slice_spacing):
        if v is not None:
            return v
    return math.inf


def one_per_study(rules: SelectionRules, candidates: list[tuple[str, VolumeFacts]]) -> dict[str, str]:
    """Among the selected volumes of each study and frame of reference, the one kept by
    `one_per_study`; returns {volume id: why not} for the others. thinnest: the smallest slice
    thickness (the spacing where there is no thickness), then the most slices, then the smallest
    volume id; most_slices: the most slices, then the thinnest, then the smallest volume id.
    Volumes without a study UID (NIfTI) are each their own study."""
    if rules.one_per_study == "all":
        return {}
    groups: dict[tuple[str, str], list[tuple[str, VolumeFacts]]] = {}
    for vid, f in candidates:
        key = (f.study_uid, f.frame_of_reference) if f.study_uid else (vid, "")
        groups.setdefault(key, []).append((vid, f))
    out = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        if rules.one_per_study == "thinnest":
            ranked = sorted(members, key=lambda m: (_thickness(m[1]), -m[1].n_slices, m[0]))
            why = "thinner"
        else:
            ranked = sorted(members, key=lambda m: (-m[1].n_slices, _thickness(m[1]), m[0]))
            why = "with more slices"
        winner = ranked[0][0]
        for vid, _ in ranked[1:]:
            out[vid] = f"study has a {why} series {winner} (one_per_study: {rules.one_per_study})"
    return out


def rule_of(error: str) -> Rule:
    """The rule a not_selected message names ("slice_thickness 5 mm not in ..." -> slice_thickness):
    only for rows of layout version 3, which had no `rule` column (records.VolumeRecord.from_stored)."""
    reason = error.split(": not selected: ", 1)[-1]
    for key in ("--sample", "--limit", "one_per_study"):
        if key in reason:
            return Rule(key.lstrip("-"))
    first = reason.split(" ", 1)[0]
    return Rule.SLICES if first.isdigit() else Rule(first) if first in Rule._value2member_map_ else Rule.UNKNOWN


# ---- trial runs -------------------------------------------------------------------------------------
def sample_rank(volume_id: str, seed: int) -> float:
    """A volume's place in [0, 1) for --sample and --limit: a hash of the seed and the volume id,
    so a subset is the same on every run and on every cluster."""
    h = hashlib.sha256(f"{seed}:{volume_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def in_sample(volume_id: str, fraction: float, seed: int) -> bool:
    return sample_rank(volume_id, seed) < fraction
