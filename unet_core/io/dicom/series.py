"""A grouped volume's objects -> one Volume in HU on its patient grid.

    read_series(members, blobs)               -> Volume
    read_series_with_sources(members, blobs)  -> (Volume, SourceFrames: the header-only source
                                                 datasets and slice-to-frame map a DICOM SEG needs)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pydicom

from unet_core.config import Limits
from unet_core.errors import InvalidVolumeError, ResourceLimitError, SeriesGeometryError
from unet_core.io.dicom.geometry import orientation_key, series_geometry
from unet_core.io.dicom.grouping import VolumeMembers, volume_budget_problem
from unet_core.io.dicom.header import geometry_fields
from unet_core.io.dicom.parse import code_string, library_errors, text, uid_string
from unet_core.io.dicom.pixels import decode_frames, fast_plane, rescale
from unet_core.volume import Volume, affine_problem

PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate")
# Largest magnitude a rescaled voxel may have: HU span -1024..~30,000 and MR / PET values stay far
# below; a rescale slope like 1e38 produces values beyond it (or infinities).
MAX_ABS_VALUE = 1e7


@dataclass
class SourceFrames:
    """The source images of a volume, for objects derived from it (DICOM SEG): header-only
    datasets in the members' order, and for each slice k of the volume grid the (dataset index,
    frame index) it came from."""

    datasets: list[pydicom.Dataset]
    frames: list[tuple[int, int]]


def _metadata(ds: pydicom.Dataset, members: VolumeMembers, keep_phi: bool) -> dict:
    meta = {
        "series_uid": members.series_uid,
        "study_uid": uid_string(text(ds, "StudyInstanceUID")),
        "n_files": len(members.headers),
        "transfer_syntax": uid_string(text(ds.file_meta, "TransferSyntaxUID")),
        "manufacturer": text(ds, "Manufacturer"),
        "body_part": code_string(text(ds, "BodyPartExamined")),
    }
    if keep_phi:
        for key in PHI_KEYWORDS:
            meta[key] = text(ds, key)
    return meta


def to_hu(raws: list[np.ndarray], rescales: list[tuple[float, float]], order: np.ndarray) -> tuple[np.ndarray, bool]:
    """Stored (rows, cols) planes -> (float32 (i = column, j = row, k) in position order, whether
    every value is finite and within MAX_ABS_VALUE). One preallocated (k, row, column) array; each
    plane converted, rescaled (float32(stored) * float32(slope) + float32(intercept), as a
    whole-volume rescale would give) and bounded by its min and max while it is in the cache (NaN
    fails both comparisons; no whole-volume temporary). Returned as a transposed view (no copy).
    float32 holds every stored integer value up to 2^24 exactly."""
    rows, cols = raws[0].shape
    out = np.empty((len(order), rows, cols), np.float32)
    within = True
    for k, i in enumerate(order):
        plane = out[k]
        slope, intercept = rescales[i]
        np.copyto(plane, raws[i], casting="unsafe")
        if slope != 1.0:
            plane *= np.float32(slope)
        if intercept != 0.0:
            plane += np.float32(intercept)
        within = within and -MAX_ABS_VALUE <= float(plane.min()) and float(plane.max()) <= MAX_ABS_VALUE
    return out.transpose(2, 1, 0), within


def _check_values(voxels: np.ndarray, rescales: list[tuple[float, float]], uri_of_slice: list[str],
                  series_uid: str) -> None:
    """Non-finite or absurd values after the rescale make the volume unusable (as NaN does in
    NIfTI): InvalidVolumeError naming the first bad slice's object, with the counts and the
    rescales that caused them. `voxels` is (i, j, k) float32; called when `to_hu` found a value
    out of bounds, to count them slice by slice."""
    n_bad = n_out = 0
    first = None
    for k in range(voxels.shape[2]):
        plane = voxels[:, :, k]
        finite = np.isfinite(plane)
        bad = plane.size - int(np.count_nonzero(finite))
        out = int(np.count_nonzero(np.abs(np.where(finite, plane, 0.0)) > MAX_ABS_VALUE))
        n_bad, n_out = n_bad + bad, n_out + out
        if first is None and (bad or out):
            first = k
    slopes = sorted(set(rescales))[:3]
    uri = uri_of_slice[first if first is not None else 0]
    raise InvalidVolumeError(
        f"{uri}: series {series_uid} has {n_bad} non-finite and {n_out} out-of-range (|value| > "
        f"{MAX_ABS_VALUE:g}) voxel values of {voxels.size} after the rescale (slope, intercept: "
        f"{', '.join(f'{a:g}, {b:g}' for a, b in slopes)}); the series' RescaleSlope / RescaleIntercept "
        "are wrong", uri=uri)


@dataclass
class _Planes:
    """What decoding collects per slice, in the members' order."""

    raws: list
    rescales: list
    positions: list
    orientations: list
    spacings: list
    refs: list  # (dataset index, frame index) of each plane

    def add(self, ref, raw, scale, position, orientation, spacing) -> None:
        self.refs.append(ref)
        self.raws.append(raw)
        self.rescales.append(scale)
        self.positions.append(position)
        self.orientations.append(orientation_key(orientation))
        self.spacings.append(spacing)


def read_series(members: VolumeMembers, blobs: Sequence[bytes], limits: Limits | None = None,
                keep_phi: bool = False) -> Volume:
    """Decode a grouped volume (one blob per header, same order) into a Volume in HU."""
    return read_series_with_sources(members, blobs, limits, keep_phi, keep_sources=False)[0]


def read_series_with_sources(
    members: VolumeMembers, blobs: Sequence[bytes], limits: Limits | None = None, keep_phi: bool = False,
    keep_sources: bool = True,
) -> tuple[Volume, SourceFrames | None]:
    """`read_series`, plus the source datasets (pixel data dropped) and the slice-to-frame map."""
    limits = limits or Limits()
    first = members.headers[0]
    if problem := volume_budget_problem(members, limits):
        raise ResourceLimitError(problem, uri=first.uri)
    planes = _Planes([], [], [], [], [], [])
    kept: list[pydicom.Dataset] = []
    first_orientation = None
    ds = None
    for d, (header, blob) in enumerate(zip(members.headers, blobs, strict=True)):
        classic = not header.enhanced and header.frames == 1 and None not in (
            header.orientation, header.position, header.pixel_spacing)
        # Classic slices after the first skip pydicom (the first gives the volume's metadata; a
        # SEG needs every source dataset).
        fast = fast_plane(blob, header) if classic and d > 0 and not keep_sources else None
        if fast is not None:
            planes.add((d, 0), fast[0][0], fast[1], header.position, header.orientation, header.pixel_spacing)
            continue
        ds, pixels = decode_frames(blob, header.uri, limits.max_decompressed_bytes)
        classic = classic and pixels.shape[0] == 1
        for f in range(pixels.shape[0]):
            if classic:  # the scan read these from the same object version
                orientation, position, spacing = header.orientation, header.position, header.pixel_spacing
            else:
                orientation, position, spacing, _ = geometry_fields(ds, header.uri, f)
            if orientation is None or position is None or spacing is None:
                raise SeriesGeometryError(f"{header.uri}: frame {f} has no plane position / orientation",
                                          uri=header.uri)
            planes.add((d, f), pixels[f], rescale(ds, f, header.uri), position, orientation, spacing)
            first_orientation = first_orientation or orientation
        if keep_sources:
            kept.append(ds)
    if len(set(planes.orientations)) > 1:
        raise SeriesGeometryError(f"{first.uri}: frames of series {members.series_uid} mix orientations", uri=first.uri)
    if len({tuple(np.round(s, 4)) for s in planes.spacings}) > 1:
        raise SeriesGeometryError(f"{first.uri}: slices of series {members.series_uid} mix pixel spacings", uri=first.uri)
    if len({p.shape for p in planes.raws}) > 1:
        raise SeriesGeometryError(f"{first.uri}: slices of series {members.series_uid} mix image sizes", uri=first.uri)
    geometry = series_geometry(
        first_orientation, np.array(planes.positions), planes.spacings[0], f"series {members.series_uid}",
        single_slice_thickness=first.slice_thickness,
    )
    problem = affine_problem(geometry.affine)
    if problem:  # slices whose own geometry passed, but not together (slice spacing, say)
        raise SeriesGeometryError(f"{first.uri}: series {members.series_uid}: {problem}", uri=first.uri)
    voxels, within = to_hu(planes.raws, planes.rescales, geometry.order)
    if not within:
        _check_values(voxels, planes.rescales, [members.headers[planes.refs[i][0]].uri for i in geometry.order],
                      members.series_uid)
    if keep_sources:
        for kept_ds in kept:  # the voxels are out of the buffers now; a SEG needs headers only
            with library_errors(members.headers[0].uri):
                if "PixelData" in kept_ds:  # a deflated object's header never held it
                    del kept_ds.PixelData
    volume = Volume(
        voxels=voxels, affine=geometry.affine, volume_id=members.volume_id,
        modality=first.modality or "OT", sources=tuple(members.uris),
        metadata=_metadata(ds, members, keep_phi),
    )
    return volume, SourceFrames(kept, [planes.refs[i] for i in geometry.order]) if keep_sources else None
