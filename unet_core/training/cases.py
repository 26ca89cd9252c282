"""Labelled cases for training: from a manifest CSV or by matching names, never by sort order.

Layouts understood (`images` and `masks` are prefixes, local or s3://):
- NIfTI:  images/<case>.nii.gz            masks/<case>.nii.gz (or <case>_mask.nii.gz ...)
- DICOM:  images/<case>/<any files>       masks/<case>.nii.gz  (mask on the series grid)
- 2D:     images/<case>.png|.tif          masks/<case>.png|.tif   (the seed's layout)
A manifest CSV has the header `case_id,image,mask`; `image` may be a NIfTI file, a DICOM
prefix or a 2D image.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

import numpy as np

from unet_core.config import Limits
from unet_core.errors import ConfigError, InputError
from unet_core.io import read_object, read_volume, storage
from unet_core.io.images2d import (
    case_id_of,
    is_image2d_name,
    mask_from_image,
    pair_by_case,
    read_image2d,
)
from unet_core.io.nifti import is_nifti_name
from unet_core.volume import Volume, sanitise


@dataclass(frozen=True)
class Case:
    case_id: str
    image: str  # NIfTI file, DICOM prefix, or 2D image
    mask: str

    @property
    def kind(self) -> str:
        if is_image2d_name(self.image):
            return "2d"
        return "nifti" if is_nifti_name(self.image) else "dicom"


@dataclass
class CaseList:
    cases: list[Case] = field(default_factory=list)
    unpaired_images: list[str] = field(default_factory=list)
    unpaired_masks: list[str] = field(default_factory=list)


def read_manifest(uri: str) -> CaseList:
    text = storage.read_bytes(uri).decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"case_id", "image", "mask"} <= set(reader.fieldnames):
        raise ConfigError(f"{uri}: a case manifest needs the header case_id,image,mask (got {reader.fieldnames})")
    out, seen = CaseList(), set()
    for n, row in enumerate(reader, start=2):
        case = sanitise(row["case_id"] or "")
        if not row["case_id"] or not row["image"] or not row["mask"]:
            raise ConfigError(f"{uri}: line {n} is missing case_id, image or mask")
        if case in seen:
            raise ConfigError(f"{uri}: line {n}: case id {row['case_id']!r} occurs twice")
        seen.add(case)
        out.cases.append(Case(case, row["image"].strip(), row["mask"].strip()))
    return out


def discover_cases(images: str, masks: str) -> CaseList:
    """Pair images and masks below two prefixes by case id."""
    image_files = [e.uri for e in storage.list_files(images)]
    mask_files = [e.uri for e in storage.list_files(masks) if is_nifti_name(e.uri) or is_image2d_name(e.uri)]
    flat = [u for u in image_files if is_nifti_name(u) or is_image2d_name(u)]
    out = CaseList()
    if flat:
        pairing = pair_by_case(flat, mask_files)
        out.cases = check_unique([Case(sanitise(c), i, m) for c, (i, m) in pairing.pairs.items()])
        out.unpaired_images, out.unpaired_masks = pairing.unpaired_images, pairing.unpaired_masks
        return out
    # DICOM: one case per first-level folder below `images`.
    base = images.rstrip("/") + "/"
    folders = sorted({u[len(base):].split("/", 1)[0] for u in image_files if "/" in u[len(base):]})
    by_case = {case_id_of(m, is_mask=True): m for m in mask_files}
    for folder in folders:
        if folder in by_case:
            out.cases.append(Case(sanitise(folder), base + folder, by_case.pop(folder)))
        else:
            out.unpaired_images.append(base + folder)
    out.unpaired_masks = sorted(by_case.values())
    check_unique(out.cases)
    return out


def check_unique(cases: list[Case]) -> list[Case]:
    """Two sources whose names sanitise to one case id would write over each other's slices:
    a ConfigError naming both."""
    seen: dict[str, Case] = {}
    for case in cases:
        other = seen.setdefault(case.case_id, case)
        if other is not case:
            raise ConfigError(f"{other.image} and {case.image} both become case id {case.case_id!r}; rename one, or "
                              "give the cases with --manifest")
    return cases


def load_case(case: Case, limits: Limits) -> tuple[Volume, Volume]:
    """(image, mask) volumes of a 3D case; masks are read as labels."""
    image = read_volume(case.image, limits)
    mask = read_volume(case.mask, limits)
    return image, mask


def load_case_2d(case: Case, limits: Limits | None = None) -> tuple[np.ndarray, int, np.ndarray]:
    """(image pixels (H, W), bits, mask (H, W) uint8) of a 2D case, grids checked."""
    limits = limits or Limits()
    pixels, bits = read_image2d(read_object(case.image, limits), case.image, limits.max_volume_bytes // 4)
    mask_px, mask_bits = read_image2d(read_object(case.mask, limits), case.mask, limits.max_volume_bytes // 4)
    if pixels.shape != mask_px.shape:
        raise InputError(f"case {case.case_id}: image {pixels.shape} and mask {mask_px.shape} differ in size", uri=case.image)
    return pixels, bits, mask_from_image(mask_px, mask_bits)
