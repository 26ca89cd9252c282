"""DICOM RT Structure Sets (RTSTRUCT) of a volume's labels, for radiotherapy planning systems.

    build_rtstruct(labels, sources, label_names, codes, ident, volume_id, fingerprint) -> RtStruct
    rtstruct_bytes(rt.dataset)                                                        -> bytes

One RT Structure Set per DICOM volume, explicit VR little endian, in the source study and a new
series: one ROI per foreground label that has voxels (ROI number = label value), a colour per
ROI, and per source slice CLOSED_PLANAR contours along voxel edges in patient coordinates (mm,
LPS), each referencing its source image (and frame, for a multi-frame source). Holes are
keyholes (`unet_core.io.dicom.contours`): a slice's polygons have disjoint interiors, so readers
that combine them by XOR and readers that combine them by union both get the mask back.

The patient and study modules are copied from the source under SEG's rules (values not valid
for their VR left empty or out, named by keyword); UIDs are derived from the volume, the model
and a namespace of their own, so a re-made RTSTRUCT replaces the earlier one in a PACS.
See docs/design.md, "RT Structure Sets".
"""
from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from unet_core.io.dicom.contours import plane_polygons
from unet_core.io.dicom.header import geometry_fields
from unet_core.io.dicom.seg import _TYPE2, _TYPE3, SegIdentity, _source_copy, _uid, _valid

if TYPE_CHECKING:
    from unet_core.io.dicom.series import SourceFrames

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
# The SOP class an RT Referenced Study item names: PS3.3 C.8.8.5 asks for one, and this is the
# value planning systems write and expect (Detached Study Management, retired as a service but
# still the conventional value here).
STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
SERIES_DESCRIPTION = "unet-ray RTSTRUCT"
SERIES_NUMBER_OFFSET = 9100  # after the SEG's (+9000) beside the source series
STRUCTURE_SET_LABEL = "UNET"
NAMESPACE = "rtstruct"  # keeps these UIDs apart from the SEG's of the same volume and model
# Contour coordinates are written rounded to this many decimals of a millimetre (0.0001 mm): at
# most 16 characters for any |coordinate| < 10^10 mm, and a vertex moves at most 0.00005 mm,
# far below any pixel spacing, so no voxel centre changes side.
DECIMALS = 4
# More contours than this in one structure set is noise, not anatomy (the 512 x 512 x 300 benchmark
# volume of five organs has 4,447): a planning system could not use it, and a salt-and-pepper
# mask would take minutes to write and hundreds of MB. Such a volume gets no RTSTRUCT, with why.
MAX_CONTOURS = 50_000
# ROI Display Colors (RGB), by ROI number, repeating after the last.
PALETTE = ((255, 0, 0), (0, 200, 0), (0, 100, 255), (255, 200, 0), (200, 0, 255), (0, 220, 220),
           (255, 120, 0), (150, 255, 100), (255, 100, 180), (120, 80, 40), (128, 128, 255), (200, 200, 200))
_CONTOUR_DATA = Tag(0x3006, 0x0050)


NO_SOURCES = "NIfTI input has no DICOM source images to reference"  # SEG's reason, word for word


class RtstructSkipped(Exception):
    """This volume cannot have an RTSTRUCT (the reason is recorded; the volume itself is fine)."""


@dataclass(frozen=True)
class RtStruct:
    """An RT Structure Set and what was left out of it."""

    dataset: pydicom.Dataset
    absent_labels: tuple[str, ...]  # foreground labels with no voxel in this volume: no ROI
    repaired: tuple[str, ...]  # source keywords left empty or out (a value not valid for its VR)
    n_contours: int

    def note(self) -> str:
        """What the volume table's `rtstruct_skipped` says of a written RTSTRUCT ("" if nothing)."""
        parts = []
        if self.absent_labels:
            parts.append(f"no voxels, so no ROI: {', '.join(self.absent_labels)}")
        if self.repaired:
            parts.append(f"left empty or out for values not valid for their VR: {', '.join(self.repaired)}")
        return ("written; " + "; ".join(parts)) if parts else ""


@dataclass(frozen=True)
class _SliceRef:
    """One slice of the volume grid: its source image and its plane in patient space (LPS mm)."""

    sop_class: str
    sop_instance: str
    series: str
    frame: int | None  # 1-based frame number of a multi-frame source, else None
    position: np.ndarray  # (3,) centre of pixel (0, 0)
    along_i: np.ndarray  # (3,) mm per column step (row cosine x column spacing)
    along_j: np.ndarray  # (3,) mm per row step (column cosine x row spacing)

    def image_item(self) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = self.sop_class
        item.ReferencedSOPInstanceUID = self.sop_instance
        if self.frame is not None:
            item.ReferencedFrameNumber = self.frame
        return item


def _slice_refs(sources: SourceFrames, where: str) -> list[_SliceRef]:
    refs = []
    for d, f in sources.frames:
        ds = sources.datasets[d]
        orientation, position, spacing, _ = geometry_fields(ds, where, f)
        if orientation is None or position is None or spacing is None:
            raise RtstructSkipped(f"{where}: source frame {f} of object {d} has no plane position / orientation")
        o = np.asarray(orientation, float)
        multi = int(ds.get("NumberOfFrames", 1) or 1) > 1
        refs.append(_SliceRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID),
                              f + 1 if multi else None, np.asarray(position, float),
                              o[:3] * float(spacing[1]), o[3:] * float(spacing[0])))
    return refs


def ds_text(values: np.ndarray) -> str:
    """Decimal strings of finite mm values, backslash-separated, each at most 16 characters:
    rounded to DECIMALS, written as the shortest decimal that reads back as the rounded value
    ("12.5", "-3", "0")."""
    values = np.round(np.asarray(values, float), DECIMALS) + 0.0  # + 0.0: no "-0"
    if not np.isfinite(values).all() or (np.abs(values) >= 1e10).any():
        raise ValueError("contour coordinates must be finite and under 10^10 mm")
    # repr is fixed-point below 1e16 and at most 4 decimals after the rounding: 16 characters
    return ("\\".join(map(repr, values.tolist())) + "\\").replace(".0\\", "\\")[:-1]


def _contour_data(text: str) -> RawDataElement:
    # Written as raw bytes: pydicom would make a DSfloat of each of the millions of values.
    data = text.encode("ascii")
    if len(data) % 2:
        data += b" "
    return RawDataElement(_CONTOUR_DATA, "DS", len(data), data, 0, False, True, True, False)


def _code_item(code: dict) -> Dataset:
    item = Dataset()
    item.CodeValue = code["value"]
    item.CodingSchemeDesignator = code["scheme"]
    item.CodeMeaning = code["meaning"][:64]
    return item


def _contours(plane: np.ndarray, ref: _SliceRef) -> list[Dataset]:
    out = []
    for polygon in plane_polygons(plane):
        world = ref.position + polygon[:, :1] * ref.along_i + polygon[:, 1:] * ref.along_j
        item = Dataset()
        item.ContourImageSequence = Sequence([ref.image_item()])
        item.ContourGeometricType = "CLOSED_PLANAR"
        item.NumberOfContourPoints = len(polygon)
        item[_CONTOUR_DATA] = _contour_data(ds_text(world.ravel()))
        out.append(item)
    return out


def _copy_patient_and_study(rt: Dataset, source: Dataset, repaired: set[str]) -> None:
    """The patient, general study and patient study modules, as for SEG (`seg._source_copy`)."""
    fixed = _source_copy(source, repaired)
    for keyword in ("StudyInstanceUID", *_TYPE2, *_TYPE3):
        if keyword not in fixed:
            continue
        element = fixed.data_element(keyword)
        value = element.value
        if element.VR == "PN" and value is not None:  # re-encoded in this object's character set
            value = [str(v) for v in value] if isinstance(value, (list, pydicom.multival.MultiValue)) else str(value)
        rt.add_new(element.tag, element.VR, value)
    # A de-identified source's flags (patient module, type 3) stay with what is derived from it.
    for keyword in ("PatientIdentityRemoved", "DeidentificationMethod"):
        if value := _valid_or_empty(source, keyword, repaired):
            setattr(rt, keyword, value)


def _valid_or_empty(source: Dataset, keyword: str, repaired: set[str]) -> str:
    """A value of the source, or "" when it is absent or not valid for its VR (then named in
    `repaired`)."""
    if keyword not in source:
        return ""
    try:
        element = source.data_element(keyword)
    except Exception:  # noqa: BLE001 - a raw element pydicom cannot convert is not valid either
        element = None
    if element is None or not _valid(element):
        repaired.add(keyword)
        return ""
    return element.value or ""


def _non_ascii(values: Iterable) -> bool:
    return any(isinstance(v, str) and not v.isascii() for v in values)


def build_rtstruct(labels: np.ndarray, sources: SourceFrames | None, label_names: list[str], codes: dict,
                   ident: SegIdentity, volume_id: str, fingerprint: str,
                   repaired: set[str] | None = None, max_contours: int = MAX_CONTOURS) -> RtStruct:
    """The RT Structure Set of one volume's labels: uint (i = column, j = row, k = slice in the
    order of `sources.frames`) with values 0 .. len(label_names) - 1, on the source grid.
    `codes` are the bundle's segment codes (label name -> {"category", "type"}); a label with
    codes gets its type as RT ROI Identification Code. Raises RtstructSkipped (the reason for
    `rtstruct_skipped`) when there are no source images (a NIfTI input), when they have no one
    frame of reference, or when no label has a voxel (a structure set needs at least one ROI)."""
    if sources is None:
        raise RtstructSkipped(NO_SOURCES)
    labels = np.asarray(labels)
    repaired = set() if repaired is None else repaired
    where = f"volume {volume_id}"
    if labels.dtype.kind not in "ub":
        raise ValueError(f"{where}: labels must be unsigned integers, not {labels.dtype}")
    if labels.ndim != 3 or labels.shape[2] != len(sources.frames):
        raise ValueError(f"{where}: labels of shape {labels.shape} do not match {len(sources.frames)} source frames")
    if labels.size and int(labels.max()) >= len(label_names):
        raise ValueError(f"{where}: label value {int(labels.max())} has no name in {label_names}")
    present = np.bincount(labels.ravel(), minlength=len(label_names)) > 0
    rois = [k for k in range(1, len(label_names)) if present[k]]
    absent = tuple(label_names[k] for k in range(1, len(label_names)) if not present[k])
    if not rois:
        raise RtstructSkipped("no foreground voxels: a structure set needs at least one ROI")
    frames_of_reference = {str(ds.get("FrameOfReferenceUID", "") or "") for ds in sources.datasets}
    if len(frames_of_reference) != 1 or "" in frames_of_reference:
        raise RtstructSkipped("the source images do not share one Frame of Reference UID (an RTSTRUCT's "
                              f"contours are in exactly one; found {len(frames_of_reference - {''})})")
    refs = _slice_refs(sources, where)
    first = sources.datasets[0]
    frame_of_reference = frames_of_reference.pop()
    now = datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    keys = (volume_id, fingerprint, ident.model_identity, NAMESPACE)

    rt = Dataset()
    rt.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    rt.SOPInstanceUID = _uid(*keys, "instance")
    rt.InstanceCreationDate, rt.InstanceCreationTime = date, time
    _copy_patient_and_study(rt, first, repaired)
    _series_and_equipment(rt, first, ident, _uid(*keys, "series"), date, time)
    # The Frame of Reference module: the sources' frame (dicom3tools' RT Structure Set IOD has it).
    rt.FrameOfReferenceUID = frame_of_reference
    rt.PositionReferenceIndicator = _valid_or_empty(first, "PositionReferenceIndicator", repaired)
    rt.StructureSetLabel = STRUCTURE_SET_LABEL
    rt.StructureSetName = ident.model_name[:64]
    rt.StructureSetDescription = f"{ident.model_name} {ident.model_identity}"[:1024]
    rt.StructureSetDate, rt.StructureSetTime = date, time
    rt.ReferencedFrameOfReferenceSequence = Sequence([
        _frame_of_reference(frame_of_reference, str(first.StudyInstanceUID), refs)])
    rt.StructureSetROISequence = Sequence([_structure_set_roi(k, label_names[k], frame_of_reference, ident)
                                           for k in rois])
    contours_by_roi = _all_contours(labels, refs, rois, len(label_names), max_contours)
    roi_contours = []
    for k in rois:
        item = Dataset()
        item.ROIDisplayColor = list(PALETTE[(k - 1) % len(PALETTE)])
        item.ContourSequence = Sequence(contours_by_roi[k])
        item.ReferencedROINumber = k
        roi_contours.append(item)
    rt.ROIContourSequence = Sequence(roi_contours)
    rt.RTROIObservationsSequence = Sequence([_observation(k, label_names[k], codes) for k in rois])
    if _non_ascii([*label_names, ident.model_name, *(str(v.value) for v in rt if v.VR in ("PN", "LO", "SH", "LT"))]):
        rt.SpecificCharacterSet = "ISO_IR 192"
    rt.file_meta = _file_meta(rt)
    for item in roi_contours:
        for contour in item.ContourSequence:
            # Says the raw ContourData is already in the encoding it will be written in; without it
            # pydicom converts every value to a DSfloat and back (most of the writing time).
            contour.set_original_encoding(False, True, contour._character_set)
    return RtStruct(rt, absent, tuple(sorted(repaired)), sum(len(c) for c in contours_by_roi.values()))


def _series_and_equipment(rt: Dataset, first: Dataset, ident: SegIdentity, series_uid: str, date: str,
                          time: str) -> None:
    """The RT Series and General Equipment modules: a new series in the source study."""
    rt.Modality = "RTSTRUCT"
    rt.SeriesInstanceUID = series_uid
    try:
        rt.SeriesNumber = int(first.get("SeriesNumber", 0) or 0) + SERIES_NUMBER_OFFSET
    except (TypeError, ValueError):
        rt.SeriesNumber = SERIES_NUMBER_OFFSET
    rt.SeriesDate, rt.SeriesTime = date, time
    rt.SeriesDescription = f"{SERIES_DESCRIPTION} {ident.model_name}"[:64]
    rt.OperatorsName = None
    rt.Manufacturer = "unet-ray"
    rt.ManufacturerModelName = ident.model_name[:64]
    rt.SoftwareVersions = ident.software_version
    rt.DeviceSerialNumber = "none"
    rt.InstanceNumber = 1


def _all_contours(labels: np.ndarray, refs: list[_SliceRef], rois: list[int], n_labels: int,
                  max_contours: int) -> dict[int, list[Dataset]]:
    """ROI number -> its Contour Sequence items, slice by slice, numbered from 1."""
    out: dict[int, list[Dataset]] = {k: [] for k in rois}
    total = 0
    by_slice = np.ascontiguousarray(np.moveaxis(labels, 2, 0))  # (k, i, j): each plane one block of memory
    for s, ref in enumerate(refs):
        plane_labels = by_slice[s]
        for k in np.flatnonzero(np.bincount(plane_labels.ravel(), minlength=n_labels)[1:]).tolist():
            contours = _contours(plane_labels == k + 1, ref)
            for n, contour in enumerate(contours, start=len(out[k + 1]) + 1):
                contour.ContourNumber = n
            out[k + 1].extend(contours)
            total += len(contours)
            if total > max_contours:
                raise RtstructSkipped(f"the labels break into more than {max_contours:,} contours (over "
                                      f"{total:,} by slice {s + 1} of {len(refs)}): noise, not structures")
    return out


def _frame_of_reference(uid: str, study_uid: str, refs: list[_SliceRef]) -> Dataset:
    """Referenced Frame of Reference -> RT Referenced Study -> RT Referenced Series, listing
    every source image (each frame of a multi-frame one)."""
    series_items = []
    for series in dict.fromkeys(r.series for r in refs):
        item = Dataset()
        item.SeriesInstanceUID = series
        item.ContourImageSequence = Sequence([r.image_item() for r in refs if r.series == series])
        series_items.append(item)
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_SOP_CLASS
    study.ReferencedSOPInstanceUID = study_uid
    study.RTReferencedSeriesSequence = Sequence(series_items)
    out = Dataset()
    out.FrameOfReferenceUID = uid
    out.RTReferencedStudySequence = Sequence([study])
    return out


def _structure_set_roi(k: int, name: str, frame_of_reference: str, ident: SegIdentity) -> Dataset:
    item = Dataset()
    item.ROINumber = k
    item.ReferencedFrameOfReferenceUID = frame_of_reference
    item.ROIName = name[:64]
    item.ROIGenerationAlgorithm = "AUTOMATIC"
    item.ROIGenerationDescription = f"{ident.model_name} {ident.model_identity}"[:64]
    return item


def _observation(k: int, name: str, codes: dict) -> Dataset:
    item = Dataset()
    item.ObservationNumber = k
    item.ReferencedROINumber = k
    item.ROIObservationLabel = name[:16]
    if name in codes:  # a code the bundle gave; the generic "Tissue" default says nothing here
        item.RTROIIdentificationCodeSequence = Sequence([_code_item(codes[name]["type"])])
    # Empty (type 2): the bundle does not say whether a label is an organ at risk, a target or
    # the external contour, and a wrong type would mislead a planner more than none.
    item.RTROIInterpretedType = ""
    item.ROIInterpreter = None
    return item


def _file_meta(rt: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = rt.SOPClassUID
    meta.MediaStorageSOPInstanceUID = rt.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def rtstruct_bytes(rt: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    rt.save_as(buf, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return buf.getvalue()


__all__ = ["NO_SOURCES", "RtStruct", "RtstructSkipped", "build_rtstruct", "ds_text", "rtstruct_bytes"]
