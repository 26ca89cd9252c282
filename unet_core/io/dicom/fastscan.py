"""A fast path of the header scan for the common case: a DICOM file (preamble, "DICM") in explicit
VR little endian whose top-level dataset reaches the pixel data. It walks the elements with
`struct` and keeps the raw values of the scan's tags only, where pydicom builds and filters an
element object for every element (about twice the time; `unet bench io`).

Anything else (another transfer syntax, an enhanced object's functional groups, a malformed or
cut-short element, a value in an unexpected VR) returns None, and the caller parses with pydicom,
which also names the problem. The values come back as pydicom would give them for these tags:
strings for UI / CS / IS, lists of strings for multi-valued DS, ints for US.
"""
from __future__ import annotations

from struct import Struct, unpack_from
from types import SimpleNamespace

from pydicom.datadict import tag_for_keyword

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
# Compressed syntaxes pydicom decodes (with the codecs extra): RLE, JPEG, JPEG-LS, JPEG 2000, HTJ2K.
ENCAPSULATED = {"1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
                "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                "1.2.840.10008.1.2.4.203"}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_DEPTH = 16
_HEAD = Struct("<HH2sH")  # group, element, VR, short length
_U32 = Struct("<I")

# keyword -> (VR, multi-valued)
FIELDS = {
    "SOPClassUID": ("UI", False), "SOPInstanceUID": ("UI", False), "SeriesInstanceUID": ("UI", False),
    "StudyInstanceUID": ("UI", False), "Modality": ("CS", False), "Rows": ("US", False), "Columns": ("US", False),
    "NumberOfFrames": ("IS", False), "SamplesPerPixel": ("US", False), "ImageOrientationPatient": ("DS", True),
    "ImagePositionPatient": ("DS", True), "PixelSpacing": ("DS", True), "SliceThickness": ("DS", False),
    "InstanceNumber": ("IS", False), "BitsAllocated": ("US", False), "BitsStored": ("US", False),
    "PixelRepresentation": ("US", False), "RescaleSlope": ("DS", False), "RescaleIntercept": ("DS", False),
    "ImageType": ("CS", True), "PhotometricInterpretation": ("CS", False),
    # for the selection rules (unet_core/segmentation/selection.py)
    "BodyPartExamined": ("CS", False), "FrameOfReferenceUID": ("UI", False), "ContrastBolusAgent": ("LO", False),
    "ContrastBolusRoute": ("LO", False), "SeriesDescription": ("LO", False), "ConvolutionKernel": ("SH", False),
}
_WANT = {tag_for_keyword(k): k for k in FIELDS}
# What decoding a classic slice needs of its header (fast_pixels): the walk keeps these only.
_PIXEL_WANT = {tag_for_keyword(k): k for k in ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated",
                                               "BitsStored", "PixelRepresentation", "RescaleSlope", "RescaleIntercept")}
# Enhanced objects keep their geometry in these sequences: pydicom parses those.
_BAIL = {tag_for_keyword("PerFrameFunctionalGroupsSequence"), tag_for_keyword("SharedFunctionalGroupsSequence")}


class Fields(SimpleNamespace):
    """The scan's values with the small part of pydicom's Dataset interface that
    `header_from_dataset` uses (`get`, `in`, `file_meta`)."""

    def get(self, keyword: str, default=None):
        return self.values.get(keyword, default)

    def __contains__(self, keyword: str) -> bool:
        return keyword in self.values


def _element(data: bytes, pos: int, end: int) -> tuple[int, bytes, int, int] | None:
    """(tag, VR, value start, value length) of the explicit VR LE element at pos."""
    if pos + 8 > end:
        return None
    group, elem = unpack_from("<HH", data, pos)
    tag = group << 16 | elem
    if group == 0xFFFE:  # item / delimiters: no VR
        return tag, b"", pos + 8, unpack_from("<I", data, pos + 4)[0]
    vr = data[pos + 4:pos + 6]
    if vr in _LONG_VRS:
        if pos + 12 > end:
            return None
        return tag, vr, pos + 12, unpack_from("<I", data, pos + 8)[0]
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        return None
    return tag, vr, pos + 8, unpack_from("<H", data, pos + 6)[0]


def _skip_to(data: bytes, pos: int, end: int, depth: int, stop: int) -> int | None:
    """Position after the `stop` delimiter that closes what starts at pos: the items of a
    sequence of undefined length (stop = sequence delimiter), or the elements of an item of
    undefined length (stop = item delimiter). Nested undefined lengths are walked too."""
    if depth > _MAX_DEPTH:
        return None
    in_sequence = stop == _SEQ_END
    while (e := _element(data, pos, end)) is not None:
        tag, vr, start, length = e
        if tag == stop:
            return start
        if (tag == _ITEM) != in_sequence:  # a sequence holds items; an item holds elements
            return None
        if length != 0xFFFFFFFF:
            pos = start + length
            continue
        if tag != _ITEM and vr not in (b"SQ", b"UN"):
            return None
        pos = _skip_to(data, start, end, depth + 1, _ITEM_END if tag == _ITEM else _SEQ_END)
        if pos is None:
            return None
    return None


def _value(vr: str, raw: bytes, multi: bool):
    if vr == "US":
        return int.from_bytes(raw[:2], "little") if len(raw) >= 2 else None
    text = raw.decode("ascii").strip("\0 ")
    if vr in ("DS", "IS") and multi:
        return [p.strip() for p in text.split("\\")] if text else None
    if vr == "CS" and multi:  # as pydicom: the value's padding goes, spaces inside values stay
        return text.split("\\") if text else None
    return text


def fast_pixels(data: bytes) -> tuple[Fields, memoryview] | None:
    """(fields, the pixel data value) of a complete object on the fast path, or None: native
    pixels, or the encapsulated items (basic offset table and fragments) of a compressed syntax."""
    found = fast_scan(data, _PIXEL_WANT)
    if found is None:
        return None
    fields, pos = found
    e = _element(data, pos, len(data))
    if e is None:
        return None
    _, _, start, length = e
    if length == 0xFFFFFFFF:
        if not fields.encapsulated:
            return None
        after = _skip_to(data, start, len(data), 0, _SEQ_END)
        return (fields, memoryview(data)[start:after - 8]) if after is not None else None
    if fields.encapsulated or start + length > len(data):
        return None
    return fields, memoryview(data)[start:start + length]


def fast_scan(data: bytes, want: dict[int, str] = _WANT) -> tuple[Fields, int] | None:
    """(fields, offset of the PixelData element) or None (parse with pydicom). `want`: the tags
    whose values are kept (keyword by tag), all of FIELDS unless a caller needs fewer."""
    end = len(data)
    if end < 144 or data[128:132] != b"DICM":
        return None
    pos, ts = 132, None
    while True:  # file meta (group 2, always explicit VR little endian)
        e = _element(data, pos, end)
        if e is None:
            return None
        tag, vr, start, length = e
        if tag >> 16 != 2:
            break
        if length == 0xFFFFFFFF or start + length > end:
            return None
        if tag == 0x00020010:
            ts = data[start:start + length].decode("ascii", "replace").strip("\0 ")
        pos = start + length
    # Native explicit VR little endian, or a compressed syntax (their datasets are explicit VR
    # little endian too); deflated data and other encodings go to pydicom.
    encapsulated = ts != EXPLICIT_VR_LE
    if encapsulated and ts not in ENCAPSULATED:
        return None
    raw: dict[str, tuple[bytes, bytes]] = {}
    # The walk is the scan's cost (about 45 elements per CT header): one unpack per element reads
    # tag, VR and short length at once; the long form's length only when the VR has one.
    head, long_length = _HEAD.unpack_from, _U32.unpack_from
    long_vrs = _LONG_VRS
    while True:
        if pos + 8 > end:
            return None
        group, elem, vr, length = head(data, pos)
        tag = group << 16 | elem
        if group == 0xFFFE:
            return None  # a stray item or delimiter
        if vr in long_vrs:
            if pos + 12 > end:
                return None
            start, length = pos + 12, long_length(data, pos + 8)[0]
        elif 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90:
            start = pos + 8
        else:
            return None
        if tag == _PIXEL_DATA:
            break
        if group > 0x7FE0 or tag in _BAIL:
            return None  # past the pixel data, or an enhanced object's functional groups
        if length == 0xFFFFFFFF:
            if tag in want or vr not in (b"SQ", b"UN"):
                return None
            pos = _skip_to(data, start, end, 0, _SEQ_END)
            if pos is None:
                return None
            continue
        pos = start + length
        if pos > end:
            return None
        if tag in want:
            raw[want[tag]] = (vr, data[start:pos])
    values = {}
    try:
        for keyword, (vr, value) in raw.items():
            expected, multi = FIELDS[keyword]
            if vr.decode("ascii") != expected:
                return None
            v = _value(expected, value, multi)
            if v not in (None, ""):
                values[keyword] = v
    except UnicodeDecodeError:
        return None
    return Fields(values=values, file_meta=SimpleNamespace(TransferSyntaxUID=ts), encapsulated=encapsulated), pos
