"""What a header scan learns about one DICOM object, and whether it is an image to segment.

    scan_header(bytes, uri, size) -> DicomHeader   (None: the prefix ended inside the header)
    classify(ds, header)          -> the first rule that sets the object aside, or None

A bulk scan reads headers only (usually just the first kilobytes of each object). Non-image
objects (SR, SEG, RTSTRUCT, presentation states, key objects, ...) and images without patient
geometry are set aside with a reason; a header that cannot be used is an error naming why.
"""
from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

from pydicom.uid import UID

from unet_core.errors import (
    EmptyFileError,
    ErrorType,
    InputError,
    NonImageObjectError,
    NoPixelDataError,
    NotDicomError,
    ResourceLimitError,
    SeriesGeometryError,
    TruncatedFileError,
    UnreadableFileError,
    UnsupportedPixelDataError,
)
from unet_core.io.dicom.fastscan import fast_scan
from unet_core.io.dicom.parse import (
    DEFAULT_MAX_INFLATED,
    PIXEL_GROUP,
    code_string,
    inflating_reader,
    library_errors,
    parse,
    parse_deflated,
    text,
    transfer_syntax,
    uid_string,
    value,
)
from unet_core.volume import MAX_POSITION_MM, MAX_VOXEL_MM, MIN_VOXEL_MM

# SOP class UID prefixes of objects that carry no cross-sectional image to segment.
NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.": "structured report or key object selection",
    "1.2.840.10008.5.1.4.1.1.66": "segmentation, registration or raw data object",
    "1.2.840.10008.5.1.4.1.1.481.": "radiotherapy object",
    "1.2.840.10008.5.1.4.1.1.11.": "presentation state",
    "1.2.840.10008.5.1.4.1.1.104.": "encapsulated document",
    "1.2.840.10008.5.1.4.1.1.9.": "waveform",
    "1.2.840.10008.5.1.4.1.1.91.": "real-world value mapping",
    "1.2.840.10008.1.3.10": "media storage directory, DICOMDIR",
}
ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR",
}
SUPPORTED_BITS = (8, 16, 32)
GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
KNOWN_PHOTOMETRIC = {*GREYSCALE, "PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK", "YBR_FULL", "YBR_FULL_422",
                     "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT"}


class ObjectKind(enum.StrEnum):
    IMAGE = "image"  # a slice or frames of a cross-sectional image: it goes into a volume
    NON_IMAGE = "non_image"  # set aside on purpose (a report, a duplicate copy, a localizer): status skipped
    ERROR = "error"  # cannot be used: status error, `error_type` says why


@dataclass
class DicomHeader:
    """What a header scan learns about one object; `reason` says why when it is not an image.
    Flat and small: one row of the series index."""

    uri: str
    size: int
    kind: ObjectKind = ObjectKind.IMAGE
    reason: str = ""
    error_type: ErrorType = ErrorType.NONE
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    series_uid: str = ""
    study_uid: str = ""
    modality: str = ""
    transfer_syntax: str = ""
    rows: int = 0
    columns: int = 0
    frames: int = 1
    orientation: tuple[float, ...] | None = None
    position: tuple[float, float, float] | None = None
    pixel_spacing: tuple[float, float] | None = None
    slice_thickness: float | None = None
    instance_number: int | None = None
    image_type: str = ""  # ImageType values joined by "\\" (LOCALIZER marks a scout)
    missing_bytes: int = 0  # pixel data the header declares beyond the object's end (truncated)
    # For the selection rules: a code string, a UID, whether a contrast agent or route is recorded,
    # and whether SeriesDescription / ConvolutionKernel match the run's patterns (digest
    # `text_rules`; None: no pattern). Those two texts are never stored (`texts`, below).
    body_part: str = ""
    frame_of_reference: str = ""
    contrast: bool = False
    description_match: bool | None = None
    kernel_match: bool | None = None
    text_rules: str = ""

    @property
    def enhanced(self) -> bool:
        return self.sop_class_uid in ENHANCED_SOP_CLASSES or self.frames > 1

    @property
    def image_types(self) -> list[str]:
        return [v.strip().upper() for v in self.image_type.split("\\") if v.strip()]

    def row(self) -> dict:
        d = asdict(self)
        d["kind"], d["error_type"] = ObjectKind(self.kind).value, ErrorType(self.error_type).value
        for key in ("orientation", "position", "pixel_spacing"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d


# ---- attributes ---------------------------------------------------------------------------------
def floats(v: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(x) for x in out) else None


def frame_item(ds: Any, frame: int, sequence: str, uri: str):
    """A functional group item of an enhanced object for `frame`: per-frame first, then shared."""
    with library_errors(uri, f"{sequence} cannot be read"):
        for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
            seq = ds.get(groups)
            if not seq:
                continue
            item = seq[frame] if groups.startswith("PerFrame") else seq[0]
            if sequence in item and item[sequence].value:
                return item[sequence].value[0]
    return None


def geometry_fields(ds: Any, uri: str, frame: int = 0) -> tuple:
    """(orientation, position, pixel_spacing, thickness) from classic or enhanced attributes."""
    orientation = floats(value(ds, "ImageOrientationPatient", uri), 6)
    position = floats(value(ds, "ImagePositionPatient", uri), 3)
    spacing = floats(value(ds, "PixelSpacing", uri), 2)
    thickness = value(ds, "SliceThickness", uri)
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        item = frame_item(ds, frame, "PlaneOrientationSequence", uri)
        orientation = floats(value(item, "ImageOrientationPatient", uri), 6) if item else orientation
        item = frame_item(ds, frame, "PlanePositionSequence", uri)
        position = floats(value(item, "ImagePositionPatient", uri), 3) if item else position
        item = frame_item(ds, frame, "PixelMeasuresSequence", uri)
        if item:
            spacing = floats(value(item, "PixelSpacing", uri), 2) or spacing
            thickness = value(item, "SliceThickness", uri, thickness)
    try:
        thickness = float(thickness) if thickness not in (None, "") else None
    except (TypeError, ValueError):
        thickness = None
    return orientation, position, spacing, thickness


def frames_of(ds: Any, uri: str) -> int:
    """NumberOfFrames (1 when absent); 0 when it is not a whole number."""
    try:
        return int(value(ds, "NumberOfFrames", uri, 1) or 1)
    except (TypeError, ValueError, OverflowError, UnreadableFileError):
        return 0


def integer(ds: Any, keyword: str, uri: str) -> int:
    """An integer attribute (0 when absent); a value that is not an integer names the object."""
    v = value(ds, keyword, uri, 0)
    try:
        return int(v or 0)
    except (TypeError, ValueError, OverflowError):
        raise UnreadableFileError(f"{uri}: {keyword} is not an integer", uri=uri) from None


def _optional_int(ds: Any, keyword: str, uri: str) -> int | None:
    try:
        v = value(ds, keyword, uri)
        return int(v) if v not in (None, "") else None
    except (TypeError, ValueError, OverflowError, UnreadableFileError):
        return None


# ---- the rules ------------------------------------------------------------------------------------
def geometry_problem(orientation, position, spacing) -> str | None:
    """Why a slice's patient geometry cannot be used (None when it can): direction cosines that are
    not two orthogonal unit vectors, a position beyond any scanner, a pixel spacing that is not a
    positive size. Checked from the header, so a corrupt slice is its own error row before any
    geometry is computed from it."""
    # Plain floats, not numpy: six numbers per object, where numpy's call overhead was a tenth of the scan.
    row, col = orientation[:3], orientation[3:]
    norms = math.hypot(*row), math.hypot(*col)
    if not (0.99 < norms[0] < 1.01 and 0.99 < norms[1] < 1.01 and abs(row[0] * col[0] + row[1] * col[1] + row[2] * col[2]) < 0.01):
        return (f"ImageOrientationPatient {list(orientation)} is not two orthogonal unit vectors "
                f"(lengths {norms[0]:.3g}, {norms[1]:.3g})")
    if max(abs(v) for v in position) > MAX_POSITION_MM:
        return f"ImagePositionPatient {list(position)} is beyond {MAX_POSITION_MM:g} mm"
    if not all(MIN_VOXEL_MM <= v <= MAX_VOXEL_MM for v in spacing):
        return f"PixelSpacing {list(spacing)} is not a size between {MIN_VOXEL_MM:g} and {MAX_VOXEL_MM:g} mm"
    return None


def pixel_problem(ds: Any, uri: str = "") -> str | None:
    """Why a greyscale image's pixel description cannot be decoded (None when it can): bits
    allocated other than 8/16/32, bits stored outside 1..allocated, a pixel representation other
    than unsigned/signed, a colour photometric interpretation. Checked from the header."""
    try:
        bits = _optional_int(ds, "BitsAllocated", uri)
        stored = value(ds, "BitsStored", uri)
        stored = int(stored) if stored not in (None, "") else bits
        representation = int(value(ds, "PixelRepresentation", uri, 0) or 0)
    except (TypeError, ValueError, OverflowError):
        return "BitsAllocated / BitsStored / PixelRepresentation are not numbers"
    if bits is None:
        if value(ds, "BitsAllocated", uri) not in (None, ""):
            return "BitsAllocated / BitsStored / PixelRepresentation are not numbers"
        return "no BitsAllocated: the pixel data cannot be interpreted"
    if bits not in SUPPORTED_BITS:
        return f"BitsAllocated {bits} is not supported (8, 16 or 32)"
    if stored is None or not 1 <= stored <= bits:
        return f"BitsStored {stored} is not between 1 and BitsAllocated {bits}"
    if representation not in (0, 1):
        return f"PixelRepresentation {representation} is neither 0 (unsigned) nor 1 (signed)"
    photometric = str(value(ds, "PhotometricInterpretation", uri, "") or "").strip()
    if photometric and photometric not in GREYSCALE:
        shown = photometric if photometric in KNOWN_PHOTOMETRIC else "(another value)"  # never free text
        return f"PhotometricInterpretation {shown} is not greyscale (MONOCHROME1 / MONOCHROME2)"
    return None


def _sop_name(sop_class: str, fallback: str) -> str:
    return UID(sop_class).name or fallback if sop_class else fallback


Verdict = tuple[ObjectKind, ErrorType, str]  # how an object is set aside: kind, error type, reason
Rule = Callable[[Any, DicomHeader, bool], "Verdict | None"]


def _non_image(ds, h: DicomHeader, has_pixels: bool) -> Verdict | None:
    for prefix, label in NON_IMAGE_SOP_CLASSES.items():
        if h.sop_class_uid.startswith(prefix):
            return (ObjectKind.NON_IMAGE, ErrorType.NON_IMAGE_OBJECT,
                    f"{_sop_name(h.sop_class_uid, h.sop_class_uid)} ({label}) is not an image to segment")
    return None


def _no_pixels(ds, h: DicomHeader, has_pixels: bool) -> Verdict | None:
    if has_pixels:
        return None
    return (ObjectKind.ERROR, ErrorType.NO_PIXEL_DATA,
            f"{_sop_name(h.sop_class_uid, 'image object')} without pixel data (no PixelData element)")


def _colour(ds, h: DicomHeader, has_pixels: bool) -> Verdict | None:
    samples = integer(ds, "SamplesPerPixel", h.uri) or 1
    if samples == 1:
        return None
    return (ObjectKind.ERROR, ErrorType.UNSUPPORTED_PIXEL_DATA,
            f"colour image ({samples} samples per pixel) is not supported")


def _pixel_description(ds, h: DicomHeader, has_pixels: bool) -> Verdict | None:
    problem = pixel_problem(ds, h.uri)
    return (ObjectKind.ERROR, ErrorType.UNSUPPORTED_PIXEL_DATA, problem) if problem else None


def _frame_count(ds, h: DicomHeader, has_pixels: bool) -> Verdict | None:
    if h.frames >= 1:
        return None
    return ObjectKind.ERROR, ErrorType.UNREADABLE, "NumberOfFrames is not a positive whole number"


def _image_size(ds, h: DicomHeader, has_pixels: bool) -> Verdict | None:
    if h.rows >= 1 and h.columns >= 1:
        return None
    return (ObjectKind.ERROR, ErrorType.UNSUPPORTED_PIXEL_DATA,
            f"an image of {h.rows} x {h.columns} pixels has no pixels to read")


def _series(ds, h: DicomHeader, has_pixels: bool) -> Verdict | None:
    return None if h.series_uid else (ObjectKind.ERROR, ErrorType.SERIES_GEOMETRY, "no SeriesInstanceUID")


def _patient_geometry(ds, h: DicomHeader, has_pixels: bool) -> Verdict | None:
    if None in (h.orientation, h.position, h.pixel_spacing):
        return (ObjectKind.NON_IMAGE, ErrorType.SERIES_GEOMETRY,
                f"{_sop_name(h.sop_class_uid, 'image')} without patient geometry (ImagePositionPatient / "
                "ImageOrientationPatient / PixelSpacing): not a cross-sectional slice")
    problem = geometry_problem(h.orientation, h.position, h.pixel_spacing)
    return (ObjectKind.ERROR, ErrorType.SERIES_GEOMETRY, problem) if problem else None


# In this order: the first rule that answers sets the object aside.
RULES: tuple[Rule, ...] = (_non_image, _no_pixels, _colour, _pixel_description, _frame_count, _image_size, _series,
                           _patient_geometry)


def classify(ds: Any, h: DicomHeader, has_pixels: bool) -> Verdict | None:
    for rule in RULES:
        verdict = rule(ds, h, has_pixels)
        if verdict is not None:
            return verdict
    return None


def header_from_dataset(ds: Any, uri: str, size: int, has_pixels: bool) -> DicomHeader:
    # A DICOMDIR's dataset has no SOP Class UID; its file meta says what it is.
    sop_class = uid_string(value(ds, "SOPClassUID", uri, ""))
    if not sop_class:
        with library_errors(uri, "MediaStorageSOPClassUID cannot be read"):
            sop_class = uid_string(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    orientation, position, spacing, thickness = geometry_fields(ds, uri)
    image_type = code_string(value(ds, "ImageType", uri) or "")
    h = DicomHeader(
        uri=uri, size=size, sop_class_uid=sop_class, image_type=image_type,
        sop_instance_uid=uid_string(value(ds, "SOPInstanceUID", uri, "")),
        series_uid=uid_string(value(ds, "SeriesInstanceUID", uri, "")),
        study_uid=uid_string(value(ds, "StudyInstanceUID", uri, "")),
        modality=code_string(str(value(ds, "Modality", uri, "") or "")),
        transfer_syntax=transfer_syntax(ds, uri),
        rows=integer(ds, "Rows", uri), columns=integer(ds, "Columns", uri), frames=frames_of(ds, uri),
        orientation=orientation, position=position, pixel_spacing=spacing,
        slice_thickness=thickness, instance_number=_optional_int(ds, "InstanceNumber", uri),
        body_part=code_string(text(ds, "BodyPartExamined")),
        frame_of_reference=uid_string(text(ds, "FrameOfReferenceUID")),
        contrast=bool(text(ds, "ContrastBolusAgent").strip() or text(ds, "ContrastBolusRoute").strip()),
    )
    # Free text, for the selection rules' patterns: held on the object, never a field (not stored).
    h.texts = {"series_description": _free_text(ds, "SeriesDescription"),
               "convolution_kernel": _free_text(ds, "ConvolutionKernel")}
    verdict = classify(ds, h, has_pixels)
    if verdict is not None:
        h.kind, h.error_type, h.reason = verdict
    return h


def _free_text(ds: Any, keyword: str) -> str:
    """A free-text value, several values joined by "\\"; "" when absent or unreadable."""
    try:
        v = value(ds, keyword, "")
    except UnreadableFileError:
        return ""
    if v is None or isinstance(v, (bytes, bytearray)):
        return ""
    return str(v) if isinstance(v, str) else "\\".join(str(x) for x in v)


# ---- the scan ---------------------------------------------------------------------------------------
def _error_header(uri: str, size: int, exc: InputError) -> DicomHeader:
    return DicomHeader(uri=uri, size=size, kind=ObjectKind.ERROR, reason=str(exc), error_type=exc.reason)


def scan_header(data: bytes, uri: str, size: int | None = None,
                max_inflated: int = DEFAULT_MAX_INFLATED) -> DicomHeader | None:
    """Scan one object's header from its bytes, or from a prefix of them.

    Returns None when `data` is a prefix that ended before the header did (read the whole object
    and call again). Bad input comes back as a header of kind ERROR naming the problem; this
    never raises for file content."""
    size = len(data) if size is None else size
    complete = len(data) >= size
    try:
        fast = fast_scan(data)  # explicit VR little endian up to the pixel data: about 2x pydicom's parse
        if fast is not None:
            return _check_pixel_length(header_from_dataset(fast[0], uri, size, has_pixels=True), data, fast[1], size)
        reader = inflating_reader(data, uri, max_inflated)
        if reader is not None:
            # Deflated: inflated as far as the header goes (the pixel data is never inflated here);
            # a prefix that ends before the header does asks for the whole object.
            try:
                ds, at_pixels = parse_deflated(reader, uri)
            except ResourceLimitError:
                raise
            except InputError:
                if reader.starved and not complete:
                    return None
                raise
            if not at_pixels and reader.starved and not complete:
                return None
            return header_from_dataset(ds, uri, size, has_pixels=at_pixels)
        try:
            ds, stop = parse(data, uri, stop_before_pixels=True, max_inflated=max_inflated)
        except InputError as exc:
            if not complete and not isinstance(exc, EmptyFileError):
                return None
            raise
        tag = data[stop:stop + 4]
        at_pixels = len(tag) == 4 and PIXEL_GROUP in (int.from_bytes(tag[:2], "little"), int.from_bytes(tag[:2], "big"))
        if not at_pixels and not complete:
            return None
        h = header_from_dataset(ds, uri, size, has_pixels=at_pixels)
        return _check_pixel_length(h, data, stop, size) if at_pixels else h
    except InputError as exc:
        return _error_header(uri, size, exc)


_LONG_PIXEL_VRS = (b"OB", b"OW", b"OD", b"OF", b"OL", b"OV", b"UN")


def _check_pixel_length(h: DicomHeader, data: bytes, pos: int, size: int) -> DicomHeader:
    """A truncated object is found from its header: the pixel data element at `pos` declares more
    bytes than the object (of `size` bytes) holds. Recorded as `missing_bytes` (grouping then makes
    it an error unless a whole copy of the instance is there), before any pixel is fetched, so a
    cut lone slice is an error row, not a slice set aside unread."""
    if h.kind != ObjectKind.IMAGE or pos + 12 > len(data):
        return h
    little = int.from_bytes(data[pos:pos + 2], "little") == PIXEL_GROUP
    order = "little" if little else "big"
    if data[pos + 4:pos + 6] in _LONG_PIXEL_VRS:  # explicit VR: tag, VR, 2 reserved, 4-byte length
        start, length = pos + 12, int.from_bytes(data[pos + 8:pos + 12], order)
    else:  # implicit VR: tag, 4-byte length
        start, length = pos + 8, int.from_bytes(data[pos + 4:pos + 8], order)
    if length != 0xFFFFFFFF and start + length > size:
        h.missing_bytes = start + length - size
    return h


# ---- back to exceptions -------------------------------------------------------------------------------
ERROR_CLASSES: dict[ErrorType, type[InputError]] = {cls.reason: cls for cls in (
    EmptyFileError, NotDicomError, TruncatedFileError, NoPixelDataError, NonImageObjectError,
    UnsupportedPixelDataError, SeriesGeometryError, ResourceLimitError, UnreadableFileError,
)}


def header_error(h: DicomHeader) -> InputError:
    """The domain exception a set-aside header stands for, naming its object."""
    message = h.reason if h.uri in h.reason else f"{h.uri}: {h.reason}"
    return ERROR_CLASSES.get(h.error_type, InputError)(message, uri=h.uri)
