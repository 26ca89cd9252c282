"""DICOM Segmentation (SEG) objects of a volume's labels, built with highdicom.

One SEG per DICOM volume, BINARY segmentation type (the profile OHIF, 3D Slicer and PACS viewers
read), explicit VR little endian, one frame per source slice (pixel-aligned: the labels are on
the source grid), every frame referencing its source image. It carries the source's patient and
study modules (a PACS files objects by them) and a new series in the source study. Segment
descriptions come from the bundle (`BundleInfo.segment_codes`, defaulting to `DEFAULT_CODES`).

An all-background mask is still a valid SEG: its frames are all stored, empty (highdicom cannot
omit every frame, and a viewer then shows "nothing found" instead of a missing result).
See docs/design.md, "DICOM SEG output".
"""
from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from unet_core.errors import ConfigError

if TYPE_CHECKING:
    from unet_core.io.dicom.series import SourceFrames

SERIES_DESCRIPTION = "unet-ray SEG"
SERIES_NUMBER_OFFSET = 9000  # SEG series number: the source's + this (viewers list it after it)

# A generic segment description: category and type "Tissue" (SNOMED CT 85756007), the choice of
# dcmqi's generic template. A bundle names its own per label (`package_model(segment_codes=...)`).
DEFAULT_CODE = {"scheme": "SCT", "value": "85756007", "meaning": "Tissue"}
DEFAULT_CODES = {"category": DEFAULT_CODE, "type": DEFAULT_CODE}

# Type 2 attributes of the patient and study modules that highdicom copies from the source: an
# archive's objects may omit them (type 2 means present, possibly empty), so copies get them empty.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
          "StudyDate", "StudyTime", "ReferringPhysicianName")


class SegSkipped(Exception):
    """This volume cannot have a SEG (the reason is recorded; the volume itself is fine)."""


@dataclass(frozen=True)
class SegIdentity:
    """What the SEG says about the algorithm that made it."""

    model_name: str
    model_identity: str  # the bundle's content identity
    software_version: str


def check_segment_codes(codes: dict, label_names: list[str], where: str = "bundle") -> None:
    """`codes` maps a foreground label name to {"category": code, "type": code}; a code is
    {"scheme", "value", "meaning"}. Raises ConfigError naming what is wrong."""
    if not isinstance(codes, dict):
        raise ConfigError(f"{where}: segment_codes must map label names to codes, not {type(codes).__name__}")
    for label, entry in codes.items():
        if label not in label_names[1:]:
            raise ConfigError(f"{where}: segment_codes names {label!r}, which is not a foreground label of "
                              f"{label_names}")
        if not isinstance(entry, dict) or set(entry) != {"category", "type"}:
            raise ConfigError(f"{where}: segment_codes[{label!r}] must have exactly 'category' and 'type'")
        for part, code in entry.items():
            if not isinstance(code, dict) or set(code) != {"scheme", "value", "meaning"} or not all(
                    isinstance(v, str) and v for v in code.values()):
                raise ConfigError(f"{where}: segment_codes[{label!r}][{part!r}] must be "
                                  '{"scheme": ..., "value": ..., "meaning": ...} with non-empty strings')


def _code(c: dict):
    return Code(value=c["value"], scheme_designator=c["scheme"], meaning=c["meaning"])


def segment_descriptions(label_names: list[str], codes: dict, ident: SegIdentity) -> list:
    """One segment per foreground label (label value k is segment number k)."""
    import highdicom as hd

    algorithm = hd.AlgorithmIdentificationSequence(
        name=ident.model_name[:64], family=dcm_codes.cid7162.ArtificialIntelligence,
        version=ident.model_identity[:64], source=f"unet-ray {ident.software_version}"[:64],
    )
    out = []
    for k, label in enumerate(label_names[1:], start=1):
        entry = codes.get(label, DEFAULT_CODES)
        out.append(hd.seg.SegmentDescription(
            segment_number=k, segment_label=label[:64], segmented_property_category=_code(entry["category"]),
            segmented_property_type=_code(entry["type"]), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        ))
    return out


# Patient and study attributes of type 3 that highdicom may copy: dropped when their value is not
# valid for their VR (a type 2 one is left empty instead).
_TYPE3 = ("PatientAge", "PatientSize", "PatientWeight", "StudyDescription", "IssuerOfPatientID", "EthnicGroup",
          "PatientComments", "OtherPatientIDs", "OtherPatientNames", "PatientBirthTime", "AdmittingDiagnosesDescription")


def _valid(element) -> bool:
    from pydicom.config import RAISE
    from pydicom.valuerep import validate_value

    values = element.value if isinstance(element.value, (list, tuple, pydicom.multival.MultiValue)) else [element.value]
    try:
        for v in values:
            if v not in (None, ""):
                validate_value(element.VR, str(v), RAISE)  # as text: a PersonName object passes as it is
    except Exception:  # noqa: BLE001 - a value pydicom cannot even convert is not valid either
        return False
    return True


def _source_copy(ds: pydicom.Dataset, repaired: set[str]) -> pydicom.Dataset:
    """A copy of a source dataset to hand to highdicom: type 2 patient / study attributes the
    archive left out are added empty; those whose value is not valid for its VR (a birth date
    "31/12/1960", a time "25:61", an over-long LO) are left empty (type 2) or dropped (type 3), and
    their keywords added to `repaired` (never their values). The source itself is not changed."""
    out = copy.copy(ds)
    out._dict = dict(ds._dict)  # its own element table: changes below stay in the copy
    for keyword in (*_TYPE2, *_TYPE3):
        element = None
        if keyword in out:
            try:
                element = out.data_element(keyword)
            except Exception:  # noqa: BLE001 - a raw element pydicom cannot convert
                repaired.add(keyword)
                del out[pydicom.datadict.tag_for_keyword(keyword)]
        if element is None:
            if keyword in _TYPE2:
                setattr(out, keyword, None)
            continue
        if not _valid(element):
            repaired.add(keyword)
            if keyword in _TYPE2:
                setattr(out, keyword, None)
            else:
                delattr(out, keyword)
    return out


def seg_frames(labels: np.ndarray, sources: SourceFrames,
               repaired: set[str] | None = None) -> tuple[list[pydicom.Dataset], np.ndarray]:
    """(source images, (frames, rows, columns) label frames) in the order highdicom pairs them:
    frame n with source image n (single-frame sources) or with frame n of the one multi-frame
    source. `labels` is (i = column, j = row, k = slice in position order), the volume grid."""
    repaired = set() if repaired is None else repaired
    n_objects = len(sources.datasets)
    multi = [d for d in sources.datasets if int(d.get("NumberOfFrames", 1) or 1) > 1]
    if multi and n_objects > 1:
        raise SegSkipped(f"the volume is assembled from {n_objects} objects of which {len(multi)} are multi-frame; "
                         "a SEG references either single-frame images or one multi-frame image")
    if labels.shape[2] != len(sources.frames):
        raise ValueError(f"labels have {labels.shape[2]} slices, the sources {len(sources.frames)} frames")
    planes = np.empty((len(sources.frames), labels.shape[1], labels.shape[0]), np.uint8)
    if multi:  # frame n of the SEG is frame n of the source
        for k, (_, f) in enumerate(sources.frames):
            planes[f] = labels[:, :, k].T
        return [_source_copy(sources.datasets[0], repaired)], planes
    order = [d for d, _ in sources.frames]
    for k in range(labels.shape[2]):
        planes[k] = labels[:, :, k].T
    return [_source_copy(sources.datasets[d], repaired) for d in order], planes


def _uid(*parts: str) -> str:
    # Deterministic: the same volume (same objects) and model give the same SEG UIDs, so a
    # re-sent SEG replaces the earlier copy in a PACS instead of duplicating it.
    return generate_uid(entropy_srcs=list(parts))


def build_seg(labels: np.ndarray, sources: SourceFrames, label_names: list[str], codes: dict, ident: SegIdentity,
              volume_id: str, fingerprint: str, repaired: set[str] | None = None) -> pydicom.Dataset:
    """The SEG dataset of one volume's labels (values 0 .. len(label_names) - 1). The keywords of
    source attributes left empty or out for an invalid value are added to `repaired`."""
    import highdicom as hd

    images, planes = seg_frames(np.asarray(labels), sources, repaired)
    first = images[0]
    try:
        source_number = int(first.get("SeriesNumber", 0) or 0)
    except (TypeError, ValueError):
        source_number = 0
    empty = not planes.any()
    return hd.seg.Segmentation(
        source_images=images, pixel_array=planes, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(label_names, codes, ident),
        series_instance_uid=_uid(volume_id, fingerprint, ident.model_identity, "series"),
        series_number=source_number + SERIES_NUMBER_OFFSET,
        sop_instance_uid=_uid(volume_id, fingerprint, ident.model_identity, "instance"),
        instance_number=1, manufacturer="unet-ray", manufacturer_model_name=ident.model_name[:64],
        software_versions=ident.software_version, device_serial_number="none",
        series_description=f"{SERIES_DESCRIPTION} {ident.model_name}"[:64],
        content_label="UNET", content_description=f"{ident.model_name} segmentation"[:64],
        transfer_syntax_uid=ExplicitVRLittleEndian, omit_empty_frames=not empty,
    )


def seg_bytes(seg: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    seg.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def software_version() -> str:
    try:
        return version("unet-ray")
    except PackageNotFoundError:
        from unet_core import __version__

        return __version__
