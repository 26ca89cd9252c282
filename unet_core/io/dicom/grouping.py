"""Which image objects form one volume, and which are set aside. Pure: headers in, new headers out.

    group_series(headers)            -> (VolumeMembers per volume, set-aside headers)
    split_off_localizers(groups, n)  -> a single slice split from a larger volume of its series
    volume_budget_problem(members)   -> the per-volume memory budget, from the headers
    single_series(headers, name)     -> the one volume a source must hold (`read_volume`)

Each rule here is the only copy: `unet segment`'s planning (unet_core/segmentation/planning.py)
and `read_volume` both call these.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterable, Sequence, TypeVar

from unet_core.config import Limits
from unet_core.errors import (
    AmbiguousSourceError,
    ConflictingInstancesError,
    ErrorType,
    InputError,
    SeriesGeometryError,
)
from unet_core.io.dicom.geometry import orientation_key
from unet_core.io.dicom.header import (
    ERROR_CLASSES,
    DicomHeader,
    ObjectKind,
    header_error,
)
from unet_core.volume import short_hash

H = TypeVar("H", bound=DicomHeader)
VOXEL_BYTES = 4  # float32 voxels of a decoded volume


@dataclass
class VolumeMembers:
    """The image objects (headers, in URI order) that form one volume of a series; `conflict`
    says why the volume cannot be built as it is (two objects claim one instance with different
    pixels), "" when it can."""

    volume_id: str
    series_uid: str
    headers: list[DicomHeader]
    conflict: str = ""

    @property
    def uris(self) -> list[str]:
        return [h.uri for h in self.headers]

    @property
    def n_slices(self) -> int:
        return sum(h.frames for h in self.headers)


def volume_key(h: DicomHeader) -> tuple:
    """What makes image objects one volume: the series, split by orientation and image size; a
    multi-frame object is a volume of its own."""
    if h.enhanced:
        return (h.series_uid, "frames", h.sop_instance_uid or h.uri)
    return (h.series_uid, orientation_key(h.orientation), h.rows, h.columns)


def volume_id_of(key: tuple) -> str:
    return "dcm-" + short_hash(*map(str, key))


def _aside(h: H, kind: ObjectKind, error_type: ErrorType, reason: str) -> H:
    return replace(h, kind=kind, error_type=error_type, reason=reason)


# ---- the rules --------------------------------------------------------------------------------------
def is_localizer(members: VolumeMembers) -> bool:
    """A scout / localizer by its ImageType (LOCALIZER). A single slice split from a larger volume
    of its series is one too (`split_off_localizers`); a lone single-slice series is not."""
    return any("LOCALIZER" in h.image_types for h in members.headers)


def split_off_localizers(groups: list[VolumeMembers], largest: dict[str, int]
                         ) -> tuple[list[VolumeMembers], list[DicomHeader]]:
    """A single classic slice split from a larger volume of its series (another orientation or
    image size) is a localizer / scout, whatever its ImageType says: set aside with reason
    `localizer`. `largest` maps a series UID to the most slices of any of its volumes (planning
    sees every volume of a series together). Returns (kept, set aside)."""
    kept, aside = [], []
    for g in groups:
        h = g.headers[0]
        if len(g.headers) == 1 and not h.enhanced and h.frames == 1 and largest.get(g.series_uid, 0) > 1:
            aside.append(_aside(h, ObjectKind.NON_IMAGE, ErrorType.LOCALIZER, (
                f"{h.uri}: a single slice split from the {largest[g.series_uid]}-slice volume of series "
                f"{g.series_uid} (another orientation or image size): taken for a localizer / scout and not "
                "segmented (--keep-localizers keeps it)")))
        else:
            kept.append(g)
    return kept, aside


def volume_budget_problem(members: VolumeMembers, limits: Limits) -> str | None:
    """The per-volume memory budget, from the headers (rows x columns x frames), before any pixel
    data is fetched: why the volume is over it, or None."""
    first = members.headers[0]
    need = members.n_slices * first.rows * first.columns * VOXEL_BYTES
    if need > limits.max_volume_bytes:
        return (f"series {members.series_uid}: {members.n_slices} slices of {first.rows}x{first.columns} need {need} "
                f"bytes, above the per-volume budget of {limits.max_volume_bytes} (raise --max-volume-bytes)")
    held = sum(h.size for h in members.headers)  # the objects' bytes, all in memory while it decodes
    if held > limits.max_volume_bytes:
        return (f"series {members.series_uid}: its {len(members.headers)} objects hold {held} bytes, above the "
                f"per-volume budget of {limits.max_volume_bytes} (raise --max-volume-bytes)")
    return None


# Whether two copies of one SOP instance hold the same pixels (None: it cannot be told).
SameContent = Callable[[DicomHeader, DicomHeader], "bool | None"]


def _duplicates(headers: list[H], same: SameContent | None) -> tuple[dict[str, H], dict[str, str]]:
    """Copies of one SOP instance (re-sends). A cut-short copy gives way to a whole one; copies
    with the same pixels (by `same`) collapse to the largest file; whole copies whose pixels differ
    are a conflict. Returns ({uri: the header set aside}, {SOP instance UID: the conflict})."""
    kept: dict[str, H] = {}
    aside: dict[str, H] = {}
    conflicts: dict[str, str] = {}
    for h in headers:
        if h.kind != ObjectKind.IMAGE or not h.sop_instance_uid:
            continue
        other = kept.get(h.sop_instance_uid)
        if other is None:
            kept[h.sop_instance_uid] = h
            continue
        if same is not None and not (h.missing_bytes or other.missing_bytes) and same(other, h) is False:
            conflicts[h.sop_instance_uid] = (f"{other.uri} and {h.uri} are both SOP instance {h.sop_instance_uid} "
                                             "with different pixel data: which one belongs to the volume is not known")
            continue
        small, big = sorted((other, h), key=lambda x: (not x.missing_bytes, x.size, x.uri))
        kept[h.sop_instance_uid] = big
        aside[small.uri] = _aside(small, ObjectKind.NON_IMAGE, ErrorType.DUPLICATE_INSTANCE,
                                  f"duplicate copy of SOP instance {h.sop_instance_uid} (kept {big.uri})")
    return aside, conflicts


def group_series(headers: Iterable[H], skip_localizers: bool = False,
                 same: SameContent | None = None) -> tuple[list[VolumeMembers], list[H]]:
    """Group image headers into volumes: by SeriesInstanceUID, split by orientation and image
    size; each multi-frame object is a volume of its own. Copies of one SOP instance keep the
    largest whole file, unless `same` tells their pixels differ: then their volume carries the
    `conflict`; a cut-short object without a whole copy is an error; with `skip_localizers`,
    localizers (`is_localizer`) are set aside. Returns (volumes, set-aside headers); the input
    headers are not changed (set-aside ones come back as new headers)."""
    headers = list(headers)
    duplicates, conflicts = _duplicates(headers, same)
    groups: dict[tuple, list[H]] = {}
    aside: list[H] = []
    for h in headers:
        h = duplicates.get(h.uri, h) if h.kind == ObjectKind.IMAGE else h
        if h.kind == ObjectKind.IMAGE and h.missing_bytes:  # cut short, and no whole copy of it is here
            h = _aside(h, ObjectKind.ERROR, ErrorType.TRUNCATED, (
                f"{h.uri}: pixel data is truncated: {h.missing_bytes} of its declared bytes are missing "
                "(found from the header, before any pixel was read)"))
        if h.kind != ObjectKind.IMAGE:
            aside.append(h)
            continue
        groups.setdefault(volume_key(h), []).append(h)
    out = [VolumeMembers(volume_id=volume_id_of(key), series_uid=key[0], headers=sorted(members, key=lambda h: h.uri),
                         conflict="; ".join(sorted({conflicts[m.sop_instance_uid] for m in members
                                                    if m.sop_instance_uid in conflicts})))
           for key, members in groups.items()]
    if skip_localizers:
        for g in [g for g in out if is_localizer(g)]:
            out.remove(g)
            aside += [_aside(h, ObjectKind.NON_IMAGE, ErrorType.LOCALIZER, (
                f"{h.uri}: a localizer / scout image of series {g.series_uid} ({g.n_slices} slice(s), "
                f"ImageType {h.image_type}): not segmented (--keep-localizers keeps them)")) for h in g.headers]
    return sorted(out, key=lambda g: (g.series_uid, -g.n_slices, g.volume_id)), aside


def single_series(headers: Sequence[DicomHeader], name: str, same: SameContent | None = None) -> VolumeMembers:
    """The one volume a source must hold; clear errors for none, several series, a series that
    mixes orientations / sizes, or copies of an instance with different pixels."""
    groups, aside = group_series(headers, same=same)
    if not groups:
        if len(aside) == 1:
            raise header_error(aside[0])
        reasons = sorted({f"{h.uri}: {h.reason}" for h in aside})[:5]
        first = next((h for h in aside if h.kind == ObjectKind.ERROR), aside[0] if aside else None)
        cls = ERROR_CLASSES.get(first.error_type, InputError) if first else InputError
        raise cls(f"{name}: no image series found; " + "; ".join(reasons), uri=name)
    series = sorted({g.series_uid for g in groups})
    if len(series) > 1:
        listing = ", ".join(f"{g.series_uid} ({g.n_slices} slices)" for g in groups)
        raise AmbiguousSourceError(
            f"{name}: holds {len(series)} series: {listing}; give one series (a list of files or a "
            "prefix per series) or use `unet segment`, which splits archives itself", uri=name,
        )
    if len(groups) > 1:
        parts = ", ".join(
            f"{g.headers[0].rows}x{g.headers[0].columns} {orientation_key(g.headers[0].orientation)} ({g.n_slices} slices)"
            for g in groups
        )
        raise SeriesGeometryError(
            f"{name}: series {series[0]} mixes image sizes or orientations: {parts}; localizers or "
            "reformats must be separate volumes", uri=name,
        )
    if groups[0].conflict:
        raise ConflictingInstancesError(f"{name}: {groups[0].conflict}", uri=name)
    return groups[0]
