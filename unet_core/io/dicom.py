"""DICOM (pydicom 3, from bytes): header scan, series grouping, volume assembly.

A bulk scan reads headers only (`stop_before_pixels`, and usually just the first kilobytes of
each object); pixels are decoded once a series is complete. Non-image objects (SR, SEG, RTSTRUCT,
presentation states, key objects, ...) and images without patient geometry are set aside with a
reason. Series are split by orientation and image size, so a localizer never lands in a volume.
"""
from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from unet_core.config import Limits
from unet_core.errors import (
    AmbiguousSourceError,
    EmptyFileError,
    InputError,
    InvalidVolumeError,
    NoPixelDataError,
    NonImageObjectError,
    NotDicomError,
    ResourceLimitError,
    SeriesGeometryError,
    TruncatedFileError,
    UnreadableFileError,
    UnsupportedPixelDataError,
)
from unet_core.io.dicom_fastscan import fast_scan
from unet_core.io.dicom_geometry import orientation_key, series_geometry
from unet_core.volume import MAX_POSITION_MM, MAX_VOXEL_MM, MIN_VOXEL_MM, Volume, affine_problem, short_hash

HEADER_PREFIX_BYTES = 64 * 1024
_PIXEL_GROUP = 0x7FE0
CODECS_HINT = "install the codecs extra: pip install 'unet-ray[codecs]'"

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
PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate")


@dataclass
class DicomHeader:
    """What a header scan learns about one object. `kind` is "image", "non_image" or "error";
    `reason` says why when it is not an image. Flat and small: one row of the series index."""

    uri: str
    size: int
    kind: str = "image"
    reason: str = ""
    error_type: str = ""
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

    @property
    def enhanced(self) -> bool:
        return self.sop_class_uid in ENHANCED_SOP_CLASSES or self.frames > 1

    def row(self) -> dict:
        d = asdict(self)
        for key in ("orientation", "position", "pixel_spacing"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d


def _parse(data: bytes, uri: str, stop_before_pixels: bool) -> tuple[pydicom.Dataset, int]:
    """Dataset and the offset where parsing stopped. Raises NotDicomError / EmptyFileError."""
    if not data:
        raise EmptyFileError(f"{uri}: empty file (0 bytes)", uri=uri)
    fp = io.BytesIO(data)
    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels, force=not has_preamble)
        # OSError / struct.error: pydicom ran out of bytes inside a sequence (a prefix that ends
        # in a long header, such as a waveform's, or a truncated file); zlib.error: a deflated
        # transfer syntax over bytes that are not a deflate stream
        except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError, NotImplementedError,
                OSError, struct.error, zlib.error) as exc:
            if has_preamble:
                raise TruncatedFileError(f"{uri}: DICOM header cannot be parsed ({exc}); the file is truncated or corrupt", uri=uri) from exc
            raise NotDicomError(f"{uri}: not a DICOM file (no 'DICM' prefix and no parseable dataset)", uri=uri) from exc
    if not has_preamble:
        uid = str(ds.get("SOPClassUID", "") or "")
        if not (uid and all(p.isdigit() for p in uid.split("."))):
            raise NotDicomError(f"{uri}: not a DICOM file (no 'DICM' prefix and no SOP Class UID)", uri=uri)
    if fp.tell() >= len(data) and _cut_short(ds):
        raise TruncatedFileError(f"{uri}: DICOM data ends inside an element (file truncated)", uri=uri)
    return ds, fp.tell()


_DECODER_PACKAGES = ("pydicom", "pylibjpeg", "openjpeg", "libjpeg", "rle")


def data_error(exc: BaseException, uri: str) -> UnreadableFileError | None:
    """An exception raised inside pydicom (or a codec it calls) while it interprets one object's
    bytes is that object's bad data: an UnreadableFileError naming the object and the exception.
    pydicom converts element values lazily, so a value whose length does not fit its VR, or a
    number that is not one, raises wherever the value is first used, with whatever type pydicom
    chose. An exception raised in this project's own code is not matched here: it stays an
    internal error (a bug to fix), which is what the fuzzer (tests/test_fuzz.py) looks for."""
    tb = exc.__traceback__
    while tb is not None:
        parts = tb.tb_frame.f_code.co_filename.split(os.sep)
        if any(p in _DECODER_PACKAGES for p in parts[-4:-1]):
            return UnreadableFileError(f"{uri}: DICOM data cannot be interpreted ({type(exc).__name__}: "
                                       f"{str(exc)[:300]})", uri=uri)
        tb = tb.tb_next
    return None


def _cut_short(ds: pydicom.Dataset) -> bool:
    """True when parsing hit the end of the bytes mid-element, or before the dataset began."""
    meta_class = getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID") if hasattr(ds, "file_meta") else None
    if meta_class and len(ds) == 0:
        return True
    if len(ds) == 0:
        return False
    last = ds._dict[list(ds._dict)[-1]]  # raw, not yet converted: its declared length is kept
    length = getattr(last, "length", None)
    value = getattr(last, "value", None)
    return length not in (None, 0xFFFFFFFF) and value is not None and len(value) < length


def _floats(value, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and np.all(np.isfinite(out)) else None


def _frame_item(ds: pydicom.Dataset, frame: int, sequence: str):
    """A functional group item for `frame`: per-frame first, then shared."""
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        seq = ds.get(groups)
        if not seq:
            continue
        item = seq[frame] if groups.startswith("PerFrame") else seq[0]
        if sequence in item and item[sequence].value:
            return item[sequence].value[0]
    return None


def _geometry_fields(ds: pydicom.Dataset, frame: int = 0) -> tuple:
    """(orientation, position, pixel_spacing, thickness) from classic or enhanced attributes."""
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    position = _floats(ds.get("ImagePositionPatient"), 3)
    spacing = _floats(ds.get("PixelSpacing"), 2)
    thickness = ds.get("SliceThickness")
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        item = _frame_item(ds, frame, "PlaneOrientationSequence")
        orientation = _floats(item.get("ImageOrientationPatient"), 6) if item else orientation
        item = _frame_item(ds, frame, "PlanePositionSequence")
        position = _floats(item.get("ImagePositionPatient"), 3) if item else position
        item = _frame_item(ds, frame, "PixelMeasuresSequence")
        if item:
            spacing = _floats(item.get("PixelSpacing"), 2) or spacing
            thickness = item.get("SliceThickness", thickness)
    try:
        thickness = float(thickness) if thickness not in (None, "") else None
    except (TypeError, ValueError):
        thickness = None
    return orientation, position, spacing, thickness




def geometry_problem(orientation, position, spacing) -> str | None:
    """Why a slice's patient geometry cannot be used (None when it can): direction cosines that are
    not two orthogonal unit vectors, a position beyond any scanner, a pixel spacing that is not a
    positive size. Checked from the header, so a corrupt slice is its own error row before any
    geometry is computed from it."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    norms = np.linalg.norm(row), np.linalg.norm(col)
    if not (0.99 < norms[0] < 1.01 and 0.99 < norms[1] < 1.01 and abs(float(row @ col)) < 0.01):
        return (f"ImageOrientationPatient {list(orientation)} is not two orthogonal unit vectors "
                f"(lengths {norms[0]:.3g}, {norms[1]:.3g})")
    if max(abs(v) for v in position) > MAX_POSITION_MM:
        return f"ImagePositionPatient {list(position)} is beyond {MAX_POSITION_MM:g} mm"
    if not all(MIN_VOXEL_MM <= v <= MAX_VOXEL_MM for v in spacing):
        return f"PixelSpacing {list(spacing)} is not a size between {MIN_VOXEL_MM:g} and {MAX_VOXEL_MM:g} mm"
    return None


SUPPORTED_BITS = (8, 16, 32)
GREYSCALE = ("MONOCHROME1", "MONOCHROME2")


def pixel_problem(ds) -> str | None:
    """Why a greyscale image's pixel description cannot be decoded (None when it can): bits
    allocated other than 8/16/32, bits stored outside 1..allocated, a pixel representation other
    than unsigned/signed, a colour photometric interpretation. Checked from the header."""
    try:
        bits = int(ds.get("BitsAllocated")) if ds.get("BitsAllocated") not in (None, "") else None
        stored = int(ds.get("BitsStored")) if ds.get("BitsStored") not in (None, "") else bits
        representation = int(ds.get("PixelRepresentation", 0) or 0)
    except (TypeError, ValueError):
        return "BitsAllocated / BitsStored / PixelRepresentation are not numbers"
    if bits is None:
        return "no BitsAllocated: the pixel data cannot be interpreted"
    if bits not in SUPPORTED_BITS:
        return f"BitsAllocated {bits} is not supported (8, 16 or 32)"
    if stored is None or not 1 <= stored <= bits:
        return f"BitsStored {stored} is not between 1 and BitsAllocated {bits}"
    if representation not in (0, 1):
        return f"PixelRepresentation {representation} is neither 0 (unsigned) nor 1 (signed)"
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    if photometric and photometric not in GREYSCALE:
        return f"PhotometricInterpretation {photometric!r} is not greyscale (MONOCHROME1 / MONOCHROME2)"
    return None


def _non_image_reason(sop_class: str) -> str | None:
    for prefix, label in NON_IMAGE_SOP_CLASSES.items():
        if sop_class.startswith(prefix):
            return f"{UID(sop_class).name or sop_class} ({label}) is not an image to segment"
    return None


def _frames(ds) -> int:
    """NumberOfFrames (1 when absent); 0 when it is not a whole number."""
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError, OverflowError):
        return 0


def _int(ds, keyword: str, uri: str) -> int:
    """An integer attribute (0 when absent); a value that is not an integer names the object."""
    value = ds.get(keyword, 0)
    try:
        return int(value or 0)
    except (TypeError, ValueError, OverflowError):
        raise UnreadableFileError(f"{uri}: {keyword} {value!r} is not an integer", uri=uri) from None


def header_from_dataset(ds: pydicom.Dataset, uri: str, size: int, has_pixels: bool) -> DicomHeader:
    # A DICOMDIR's dataset has no SOP Class UID; its file meta says what it is.
    sop_class = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")
                    or "")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    frames = _frames(ds)
    orientation, position, spacing, thickness = _geometry_fields(ds)
    try:
        instance = int(ds.get("InstanceNumber")) if ds.get("InstanceNumber") not in (None, "") else None
    except (TypeError, ValueError):
        instance = None
    image_type = ds.get("ImageType") or ""
    image_type = image_type if isinstance(image_type, str) else "\\".join(str(v) for v in image_type)
    h = DicomHeader(
        uri=uri, size=size, sop_class_uid=sop_class, image_type=image_type,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        modality=str(ds.get("Modality", "") or ""),
        transfer_syntax=str(ts or ""),
        rows=_int(ds, "Rows", uri), columns=_int(ds, "Columns", uri), frames=frames,
        orientation=orientation, position=position, pixel_spacing=spacing,
        slice_thickness=thickness, instance_number=instance,
    )
    reason = _non_image_reason(sop_class)
    if reason:
        h.kind, h.reason, h.error_type = "non_image", reason, NonImageObjectError.reason
    elif not has_pixels:
        h.kind, h.error_type = "error", NoPixelDataError.reason
        h.reason = f"{UID(sop_class).name or 'image object'} without pixel data (no PixelData element)"
    elif (_int(ds, "SamplesPerPixel", uri) or 1) != 1:
        h.kind, h.error_type = "error", UnsupportedPixelDataError.reason
        h.reason = f"colour image ({ds.get('SamplesPerPixel')} samples per pixel) is not supported"
    elif problem := pixel_problem(ds):
        h.kind, h.reason, h.error_type = "error", problem, UnsupportedPixelDataError.reason
    elif frames < 1:
        h.kind, h.error_type = "error", UnreadableFileError.reason
        h.reason = f"NumberOfFrames {ds.get('NumberOfFrames')!r} is not a positive whole number"
    elif h.rows < 1 or h.columns < 1:
        h.kind, h.error_type = "error", UnsupportedPixelDataError.reason
        h.reason = f"an image of {h.rows} x {h.columns} pixels has no pixels to read"
    elif not h.series_uid:
        h.kind, h.reason, h.error_type = "error", "no SeriesInstanceUID", SeriesGeometryError.reason
    elif orientation is None or position is None or spacing is None:
        h.kind, h.error_type = "non_image", SeriesGeometryError.reason
        h.reason = (f"{UID(sop_class).name or 'image'} without patient geometry "
                    "(ImagePositionPatient / ImageOrientationPatient / PixelSpacing): not a cross-sectional slice")
    elif problem := geometry_problem(orientation, position, spacing):
        h.kind, h.reason, h.error_type = "error", problem, SeriesGeometryError.reason
    return h


def scan_header(data: bytes, uri: str, size: int | None = None) -> DicomHeader | None:
    """Scan one object's header from its bytes, or from a prefix of them.

    Returns None when `data` is a prefix that ended before the header did (read the whole object
    and call again). Bad input comes back as a header of kind "error" naming the problem; this
    never raises for file content."""
    size = len(data) if size is None else size
    complete = len(data) >= size
    fast = fast_scan(data)  # explicit VR little endian up to the pixel data: about 2x pydicom's parse
    if fast is not None:
        return _check_pixel_length(header_from_dataset(fast[0], uri, size, has_pixels=True), data, fast[1], size)
    try:
        ds, stop = _parse(data, uri, stop_before_pixels=True)
    except InputError as exc:
        if not complete and not isinstance(exc, EmptyFileError):
            return None
        return DicomHeader(uri=uri, size=size, kind="error", reason=str(exc), error_type=exc.reason)
    if str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "") == pydicom.uid.DeflatedExplicitVRLittleEndian:
        # Deflated: where parsing stopped is an offset into the inflated stream, not into `data`;
        # the whole object tells whether pixel data follows.
        if not complete:
            return None
        try:
            ds, _ = _parse(data, uri, stop_before_pixels=False)
        except InputError as exc:
            return DicomHeader(uri=uri, size=size, kind="error", reason=str(exc), error_type=exc.reason)
        return header_from_dataset(ds, uri, size, has_pixels="PixelData" in ds)
    tag = data[stop:stop + 4]
    at_pixels = len(tag) == 4 and (
        int.from_bytes(tag[:2], "little") == _PIXEL_GROUP or int.from_bytes(tag[:2], "big") == _PIXEL_GROUP
    )
    if not at_pixels and not complete:
        return None
    h = header_from_dataset(ds, uri, size, has_pixels=at_pixels)
    return _check_pixel_length(h, data, stop, size) if at_pixels else h


_LONG_PIXEL_VRS = (b"OB", b"OW", b"OD", b"OF", b"OL", b"OV", b"UN")


def _check_pixel_length(h: DicomHeader, data: bytes, pos: int, size: int) -> DicomHeader:
    """A truncated object is found from its header: the pixel data element at `pos` declares more
    bytes than the object (of `size` bytes) holds. Recorded as `missing_bytes` (grouping then makes
    it an error unless a whole copy of the instance is there), before any pixel is fetched, so a
    cut lone slice is an error row, not a slice set aside unread."""
    if h.kind != "image" or pos + 12 > len(data):
        return h
    little = int.from_bytes(data[pos:pos + 2], "little") == _PIXEL_GROUP
    order = "little" if little else "big"
    if data[pos + 4:pos + 6] in _LONG_PIXEL_VRS:  # explicit VR: tag, VR, 2 reserved, 4-byte length
        start, length = pos + 12, int.from_bytes(data[pos + 8:pos + 12], order)
    else:  # implicit VR: tag, 4-byte length
        start, length = pos + 8, int.from_bytes(data[pos + 4:pos + 8], order)
    if length != 0xFFFFFFFF and start + length > size:
        h.missing_bytes = start + length - size
    return h


# ---- grouping ---------------------------------------------------------------------------------
@dataclass
class SeriesGroup:
    """Image objects forming one volume."""

    volume_id: str
    series_uid: str
    headers: list[DicomHeader]

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


LOCALIZER = "localizer"


def is_localizer(group: "SeriesGroup") -> bool:
    """A scout / localizer: its ImageType says LOCALIZER. (A single slice split from a larger volume
    of its series is one too: planning decides that, where all volumes of a series meet,
    unet_core/segmentation/planning.py: _split_off_localizers. A lone single-slice series is not.)"""
    return any("LOCALIZER" in h.image_type.upper().split("\\") for h in group.headers)


def group_series(headers: Iterable[DicomHeader], skip_localizers: bool = False) -> tuple[list[SeriesGroup], list[DicomHeader]]:
    """Group image headers into volumes: by SeriesInstanceUID, split by orientation and image
    size; each multi-frame object is a volume of its own. Copies of one SOP instance (re-sends)
    keep the largest file; the others are set aside; with `skip_localizers`, so are localizers
    (`is_localizer`). Returns (groups, set-aside headers)."""
    groups: dict[tuple, list[DicomHeader]] = {}
    aside: list[DicomHeader] = []
    kept: dict[str, DicomHeader] = {}
    for h in headers:
        if h.kind == "image" and h.sop_instance_uid:
            other = kept.get(h.sop_instance_uid)
            if other is not None:
                small, big = sorted((other, h), key=lambda x: (x.size, x.uri))
                kept[h.sop_instance_uid] = big
                small.kind, small.error_type = "non_image", "duplicate_instance"
                small.reason = f"duplicate copy of SOP instance {h.sop_instance_uid} (kept {big.uri})"
                continue
            kept[h.sop_instance_uid] = h
    for h in headers:
        if h.kind == "image" and h.missing_bytes:  # cut short, and no whole copy of it is here
            h.kind, h.error_type = "error", TruncatedFileError.reason
            h.reason = (f"{h.uri}: pixel data is truncated: {h.missing_bytes} of its declared bytes are missing "
                        "(found from the header, before any pixel was read)")
        if h.kind != "image":
            aside.append(h)
            continue
        groups.setdefault(volume_key(h), []).append(h)
    out = [
        SeriesGroup(volume_id=volume_id_of(key), series_uid=key[0], headers=sorted(members, key=lambda h: h.uri))
        for key, members in groups.items()
    ]
    if skip_localizers:
        for g in [g for g in out if is_localizer(g)]:
            out.remove(g)
            for h in g.headers:
                h.kind, h.error_type = "non_image", LOCALIZER
                h.reason = (f"{h.uri}: a localizer / scout image of series {g.series_uid} ({g.n_slices} slice(s), "
                            f"ImageType {h.image_type}): not segmented (--keep-localizers keeps them)")
                aside.append(h)
    return sorted(out, key=lambda g: (g.series_uid, -g.n_slices, g.volume_id)), aside


def single_series(headers: Sequence[DicomHeader], name: str) -> SeriesGroup:
    """The one volume a source must hold; clear errors for none, several series, or a series
    that mixes orientations / sizes."""
    groups, aside = group_series(headers)
    if not groups:
        if len(aside) == 1:
            raise header_error(aside[0])
        reasons = sorted({f"{h.uri}: {h.reason}" for h in aside})[:5]
        first = next((h for h in aside if h.kind == "error"), aside[0] if aside else None)
        cls = ERROR_TYPES.get(first.error_type, InputError) if first else InputError
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
    return groups[0]


ERROR_TYPES = {cls.reason: cls for cls in (
    EmptyFileError, NotDicomError, TruncatedFileError, NoPixelDataError, NonImageObjectError,
    UnsupportedPixelDataError, SeriesGeometryError, ResourceLimitError,
)}


def header_error(h: DicomHeader) -> InputError:
    """The domain exception a set-aside header stands for, naming its object."""
    message = h.reason if h.uri in h.reason else f"{h.uri}: {h.reason}"
    return ERROR_TYPES.get(h.error_type, InputError)(message, uri=h.uri)


# ---- pixels -----------------------------------------------------------------------------------
def _decoder_available(ts: UID) -> bool:
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(ts).is_available)
    except NotImplementedError:
        return False


_NATIVE_SYNTAXES = {pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian,
                    pydicom.uid.DeflatedExplicitVRLittleEndian}


def _native_frames(ds: pydicom.Dataset, ts: UID, frames: int) -> np.ndarray | None:
    """Stored values of uncompressed little-endian monochrome pixel data, read straight from the
    buffer; None when another path must decode it."""
    if ts not in _NATIVE_SYNTAXES:
        return None
    try:
        return _from_buffer(ds.PixelData, int(ds.BitsAllocated), int(ds.get("BitsStored", ds.BitsAllocated)),
                            int(ds.get("PixelRepresentation", 0)) == 1, int(ds.get("SamplesPerPixel", 1)),
                            frames, int(ds.Rows), int(ds.Columns))
    except (AttributeError, TypeError, ValueError):
        return None


def _from_buffer(buf, bits: int, stored: int, signed: bool, samples: int, frames: int, rows: int,
                 cols: int) -> np.ndarray | None:
    """(frames, rows, cols) stored values from a little-endian buffer (a view: no copy unless bits
    must be masked or sign-extended, exactly as pydicom's pixel_array does); None if unsupported."""
    if samples != 1 or bits not in (8, 16, 32) or not 0 < stored <= bits or len(buf) < frames * rows * cols * bits // 8:
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    arr = np.frombuffer(buf, dtype, count=frames * rows * cols).reshape(frames, rows, cols)
    if stored < bits:
        if signed:  # sign-extend from bit `stored - 1`
            shift = bits - stored
            arr = (arr << shift) >> shift
        else:
            arr = arr & dtype.type((1 << stored) - 1)
    return arr


def _fast_plane(blob: bytes, header: DicomHeader) -> tuple[np.ndarray, tuple[float, float]] | None:
    """(stored (1, rows, cols), (slope, intercept)) of a classic single-frame slice on the fast
    path (no pydicom parse), or None."""
    from unet_core.io.dicom_fastscan import fast_pixels

    found = fast_pixels(blob)
    if found is None:
        return None
    f, buf = found
    try:
        if int(f.get("NumberOfFrames", 1) or 1) != 1 or (f.get("Rows"), f.get("Columns")) != (header.rows, header.columns):
            return None
        bits = int(f.get("BitsAllocated", 0) or 0)
        stored, signed = int(f.get("BitsStored", bits) or bits), int(f.get("PixelRepresentation", 0) or 0) == 1
        samples = int(f.get("SamplesPerPixel", 1) or 1)
        slope, intercept = float(f.get("RescaleSlope") or 1.0), float(f.get("RescaleIntercept") or 0.0)
    except (TypeError, ValueError):
        return None
    if not f.encapsulated:
        arr = _from_buffer(buf, bits, stored, signed, samples, 1, header.rows, header.columns)
        return (arr, (slope, intercept)) if arr is not None else None
    # A compressed slice: its codec once, through pydicom's decoder, without parsing the dataset
    # again. Any failure goes back to the pydicom path, which names the problem.
    ts = UID(f.file_meta.TransferSyntaxUID)
    if samples != 1 or not ts.is_transfer_syntax or not _decoder_available(ts):
        return None
    from pydicom.pixels import get_decoder

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr, _ = get_decoder(ts).as_array(
                bytes(buf), rows=header.rows, columns=header.columns, samples_per_pixel=1, bits_allocated=bits,
                bits_stored=stored, pixel_representation=int(signed), photometric_interpretation="MONOCHROME2",
                number_of_frames=1)
    except Exception:  # noqa: BLE001 - decoders raise many types; pydicom's path reports it
        return None
    return (arr.reshape(1, header.rows, header.columns), (slope, intercept)) if arr.size == header.rows * header.columns else None


def decode_frames(data: bytes, uri: str) -> tuple[pydicom.Dataset, np.ndarray]:
    """(dataset, raw stored values as (frames, rows, cols)) for one object. Uncompressed pixel data
    is a view of the buffer; compressed data goes through its codec once (pydicom's decoders)."""
    ds, _ = _parse(data, uri, stop_before_pixels=False)
    if "PixelData" not in ds:
        raise NoPixelDataError(f"{uri}: DICOM object has no pixel data", uri=uri)
    meta = ds.file_meta
    if not str(meta.get("TransferSyntaxUID", "") or "").strip("\0 "):
        # Missing or empty: the encoding pydicom found the data set in says how pixels are stored.
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (
            pydicom.uid.ImplicitVRLittleEndian if implicit
            else pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian
        )
    ts = UID(meta.TransferSyntaxUID)
    if not ts.is_transfer_syntax:
        raise UnsupportedPixelDataError(
            f"{uri}: transfer syntax UID {str(ts)!r} is not a transfer syntax this reader knows; the pixel data "
            "cannot be interpreted", uri=uri)
    if ts.is_compressed and not _decoder_available(ts):
        raise UnsupportedPixelDataError(
            f"{uri}: pixel data is compressed as {ts.name} ({ts}) and no decoder for it is "
            f"installed; {CODECS_HINT}", uri=uri,
        )
    frames = _frames(ds)
    if frames < 1:
        raise UnreadableFileError(f"{uri}: NumberOfFrames {ds.get('NumberOfFrames')!r} is not a positive whole number",
                                  uri=uri)
    if not ts.is_compressed:
        expected = (_int(ds, "Rows", uri) * _int(ds, "Columns", uri) * frames * (_int(ds, "SamplesPerPixel", uri) or 1)
                    * (_int(ds, "BitsAllocated", uri) // 8))
        if len(ds.PixelData or b"") < expected:
            raise TruncatedFileError(
                f"{uri}: pixel data is truncated: {len(ds.PixelData or b'')} of {expected} bytes", uri=uri
            )
        native = _native_frames(ds, ts, frames)
        if native is not None:
            return ds, native
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many types
        text = str(exc)
        if any(w in text.lower() for w in ("less than expected", "truncat", "end of", "insufficient")) or isinstance(exc, EOFError):
            raise TruncatedFileError(f"{uri}: pixel data is truncated ({text})", uri=uri) from exc
        raise UnsupportedPixelDataError(f"{uri}: pixel data in {ts.name} cannot be decoded: {text}", uri=uri) from exc
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.ndim != 3 or pixels.shape[0] != frames:
        raise UnsupportedPixelDataError(
            f"{uri}: decoded pixels have shape {pixels.shape}, expected ({frames}, rows, columns) "
            "of one sample per pixel", uri=uri,
        )
    return ds, pixels


def _rescale(ds: pydicom.Dataset, frame: int) -> tuple[float, float]:
    item = _frame_item(ds, frame, "PixelValueTransformationSequence")
    source = item if item is not None and "RescaleSlope" in item else ds
    try:
        slope = float(source.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(source.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError):
        slope, intercept = 1.0, 0.0
    return slope, intercept


def _text(ds, keyword: str) -> str:
    """A descriptive value as text; "" when it is absent or pydicom cannot interpret it (a
    description never decides whether a volume can be segmented)."""
    try:
        return str(ds.get(keyword, "") or "")
    except Exception as exc:  # noqa: BLE001
        if data_error(exc, "") is None:
            raise
        return ""


def _metadata(ds: pydicom.Dataset, group: SeriesGroup, keep_phi: bool) -> dict:
    meta = {
        "series_uid": group.series_uid,
        "study_uid": _text(ds, "StudyInstanceUID"),
        "n_files": len(group.headers),
        "transfer_syntax": _text(ds.file_meta, "TransferSyntaxUID"),
        "manufacturer": _text(ds, "Manufacturer"),
        "body_part": _text(ds, "BodyPartExamined"),
    }
    if keep_phi:
        for key in PHI_KEYWORDS:
            meta[key] = _text(ds, key)
    return meta


def _to_hu(raws: list[np.ndarray], rescales: list[tuple[float, float]], order: np.ndarray) -> np.ndarray:
    """Stored (rows, cols) planes -> float32 (i = column, j = row, k) in position order: one
    preallocated (k, row, column) array filled plane by plane, the rescale applied once to the
    whole volume when every plane shares it (as in almost every series), and returned as a
    transposed view (no copy). float32 holds every stored integer value up to 2^24 exactly."""
    rows, cols = raws[0].shape
    out = np.empty((len(order), rows, cols), np.float32)
    for k, i in enumerate(order):
        out[k] = raws[i]
    if len(set(rescales)) == 1:
        slope, intercept = rescales[0]
        if slope != 1.0:
            out *= np.float32(slope)
        if intercept != 0.0:
            out += np.float32(intercept)
    else:
        for k, i in enumerate(order):
            slope, intercept = rescales[i]
            out[k] *= np.float32(slope)
            out[k] += np.float32(intercept)
    return out.transpose(2, 1, 0)


# Largest magnitude a rescaled voxel may have: HU span -1024..~30,000 and MR / PET values stay far
# below; a rescale slope like 1e38 produces values beyond it (or infinities).
MAX_ABS_VALUE = 1e7


def _check_values(voxels: np.ndarray, rescales: list[tuple[float, float]], uri_of_slice: list[str],
                  series_uid: str) -> None:
    """Non-finite or absurd values after the rescale make the volume unusable (as NaN does in
    NIfTI): InvalidVolumeError naming the first bad slice's object, with the counts and the
    rescales that caused them."""
    finite = np.isfinite(voxels)
    wild = np.abs(np.where(finite, voxels, 0.0)) > MAX_ABS_VALUE
    n_bad = int(voxels.size - np.count_nonzero(finite))
    n_out = int(np.count_nonzero(wild))
    if n_bad or n_out:
        slopes = sorted(set(rescales))[:3]
        k = int(np.flatnonzero((~finite | wild).any(axis=(0, 1)))[0])
        uri = uri_of_slice[k]
        raise InvalidVolumeError(
            f"{uri}: series {series_uid} has {n_bad} non-finite and {n_out} out-of-range (|value| > "
            f"{MAX_ABS_VALUE:g}) voxel values of {voxels.size} after the rescale (slope, intercept: "
            f"{', '.join(f'{a:g}, {b:g}' for a, b in slopes)}); the series' RescaleSlope / RescaleIntercept "
            "are wrong", uri=uri)


@dataclass
class SourceFrames:
    """The source images of a volume, for objects derived from it (DICOM SEG): header-only
    datasets in the group's order, and for each slice k of the volume grid the (dataset index,
    frame index) it came from."""

    datasets: list[pydicom.Dataset]
    frames: list[tuple[int, int]]


def read_series(
    group: SeriesGroup, blobs: Sequence[bytes], limits: Limits | None = None, keep_phi: bool = False
) -> Volume:
    """Decode a grouped series (one blob per header, same order) into a Volume in HU."""
    return read_series_with_sources(group, blobs, limits, keep_phi, keep_sources=False)[0]


def read_series_with_sources(
    group: SeriesGroup, blobs: Sequence[bytes], limits: Limits | None = None, keep_phi: bool = False,
    keep_sources: bool = True,
) -> tuple[Volume, SourceFrames | None]:
    """`read_series`, plus the source datasets (pixel data dropped) and the slice-to-frame map."""
    limits = limits or Limits()
    first = group.headers[0]
    need = group.n_slices * first.rows * first.columns * 4
    if need > limits.max_volume_bytes:
        raise ResourceLimitError(
            f"series {group.series_uid}: {group.n_slices} slices of {first.rows}x{first.columns} need "
            f"{need} bytes, above the per-volume budget of {limits.max_volume_bytes} "
            "(raise --max-volume-bytes)", uri=first.uri,
        )
    raws, rescales, positions, orientations, spacings, refs, kept = [], [], [], [], [], [], []
    first_orientation = None
    ds = None
    for d, (header, blob) in enumerate(zip(group.headers, blobs)):
        classic = not header.enhanced and header.frames == 1 and None not in (
            header.orientation, header.position, header.pixel_spacing)
        # Classic slices after the first skip pydicom (the first gives the volume's metadata; a
        # SEG needs every source dataset).
        fast = _fast_plane(blob, header) if classic and d > 0 and not keep_sources else None
        if fast is not None:
            refs.append((d, 0))
            raws.append(fast[0][0])
            rescales.append(fast[1])
            positions.append(header.position)
            orientations.append(orientation_key(header.orientation))
            spacings.append(header.pixel_spacing)
            continue
        try:
            ds, pixels = decode_frames(blob, header.uri)
            classic = classic and pixels.shape[0] == 1
            for f in range(pixels.shape[0]):
                refs.append((d, f))
                if classic:  # the scan read these from the same object version
                    orientation, position, spacing = header.orientation, header.position, header.pixel_spacing
                else:
                    orientation, position, spacing, _ = _geometry_fields(ds, f)
                if orientation is None or position is None or spacing is None:
                    raise SeriesGeometryError(f"{header.uri}: frame {f} has no plane position / orientation",
                                              uri=header.uri)
                raws.append(pixels[f])
                rescales.append(_rescale(ds, f))
                positions.append(position)
                orientations.append(orientation_key(orientation))
                first_orientation = first_orientation or orientation
                spacings.append(spacing)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - pydicom's errors on this object's data name it
            raise data_error(exc, header.uri) or exc
        if keep_sources:
            kept.append(ds)
    if len(set(orientations)) > 1:
        raise SeriesGeometryError(f"{first.uri}: frames of series {group.series_uid} mix orientations", uri=first.uri)
    if len({tuple(np.round(s, 4)) for s in spacings}) > 1:
        raise SeriesGeometryError(f"{first.uri}: slices of series {group.series_uid} mix pixel spacings", uri=first.uri)
    if len({p.shape for p in raws}) > 1:
        raise SeriesGeometryError(f"{first.uri}: slices of series {group.series_uid} mix image sizes", uri=first.uri)
    geometry = series_geometry(
        first_orientation, np.array(positions), spacings[0], f"series {group.series_uid}",
        single_slice_thickness=first.slice_thickness,
    )
    problem = affine_problem(geometry.affine)
    if problem:  # slices whose own geometry passed, but not together (slice spacing, say)
        raise SeriesGeometryError(f"{first.uri}: series {group.series_uid}: {problem}", uri=first.uri)
    voxels = _to_hu(raws, rescales, geometry.order)
    _check_values(voxels, rescales, [group.headers[refs[i][0]].uri for i in geometry.order], group.series_uid)
    if keep_sources:
        for kept_ds in kept:  # the voxels are out of the buffers now; a SEG needs headers only
            del kept_ds.PixelData
    volume = Volume(
        voxels=voxels, affine=geometry.affine, volume_id=group.volume_id,
        modality=first.modality or "OT", sources=tuple(group.uris),
        metadata=_metadata(ds, group, keep_phi),
    )
    return volume, SourceFrames(kept, [refs[i] for i in geometry.order]) if keep_sources else None
