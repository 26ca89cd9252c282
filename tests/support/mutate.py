"""Mutations of valid DICOM and NIfTI files for the fuzzer (tests/test_fuzz.py), at the byte level,
independent of the project's readers: an explicit-VR-little-endian element walker finds where each
element's tag, VR, length and value are, and a mutation rewrites them. A mutation is a small value
(a tuple) so hypothesis can shrink a failing case and a regression test can name it.

DICOM mutations
    ("value", tag, text_or_int)   replace (or insert) an element's value, its length updated
    ("delete", tag)               remove an element
    ("length", tag, n)            set the length field only (the bytes that follow are reinterpreted)
    ("vr", tag, vr)               set the VR only (a short/long-length VR change moves the layout)
    ("pixels", delta)             shorten (delta < 0) or lengthen the pixel data, its length updated
    ("truncate", fraction)        cut the object at a fraction of its size
    ("flip", fraction, byte)      overwrite one byte of the header
NIfTI mutations
    ("field", name, value)        set a NIfTI-1 header field (dims, datatype, pixdim, offsets, ...)
    ("truncate", fraction), ("flip", fraction, byte)
"""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass

LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
PIXEL_DATA = 0x7FE00010
UNDEFINED = 0xFFFFFFFF


@dataclass
class Element:
    offset: int  # of the tag
    tag: int
    vr: bytes
    header: int  # bytes before the value (8 or 12)
    length: int

    @property
    def value_offset(self) -> int:
        return self.offset + self.header


def walk(data: bytes) -> list[Element]:
    """The elements of an explicit VR little endian object (file meta and data set) up to and
    including the pixel data; stops at an undefined length (a sequence)."""
    if data[128:132] != b"DICM":
        raise ValueError("not a DICOM file with a preamble")
    out, pos = [], 132
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        vr = data[pos + 4:pos + 6]
        if vr in LONG_VRS:
            (length,) = struct.unpack_from("<I", data, pos + 8)
            header = 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            header = 8
        e = Element(pos, (group << 16) | elem, vr, header, length)
        out.append(e)
        if e.tag == PIXEL_DATA or length == UNDEFINED:
            break
        pos += header + length
    return out


def _encode(vr: bytes, value: str | int) -> bytes:
    if isinstance(value, int):  # binary whatever the element's VR now says
        return struct.pack("<H", value & 0xFFFF)
    raw = str(value).encode("latin-1")
    if len(raw) % 2:
        raw += b"\0" if vr == b"UI" else b" "
    return raw


def _element_bytes(tag: int, vr: bytes, value: bytes) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in LONG_VRS:
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value) & 0xFFFF) + value


def mutate_dicom(data: bytes, m: tuple) -> bytes:
    op = m[0]
    if op == "truncate":
        return data[: int(len(data) * m[1])]
    try:
        elements = walk(data)
    except (ValueError, struct.error):  # cut or scrambled by an earlier mutation: nothing to aim at
        return data
    if op == "flip":
        end = elements[-1].offset if elements else len(data)
        at = 132 + int((end - 132) * m[1])
        return data[:at] + bytes([m[2]]) + data[at + 1:]
    if op == "pixels":
        (px,) = [e for e in elements if e.tag == PIXEL_DATA] or [None]
        if px is None:
            return data
        value = data[px.value_offset:px.value_offset + px.length]
        value = value[: len(value) + m[1]] if m[1] < 0 else value + bytes(m[1])
        return data[:px.offset] + _element_bytes(px.tag, px.vr, value) + data[px.value_offset + px.length:]
    tag = m[1]
    found = [e for e in elements if e.tag == tag]
    if op == "value" and not found:  # insert before the first element with a larger tag
        vr = VALUE_VRS.get(tag, b"LO")
        after = next((e for e in elements if e.tag > tag), None)
        at = after.offset if after else len(data)
        return data[:at] + _element_bytes(tag, vr, _encode(vr, m[2])) + data[at:]
    if not found:
        return data
    e = found[0]
    end = e.value_offset + (0 if e.length == UNDEFINED else e.length)
    if op == "value":
        return data[:e.offset] + _element_bytes(tag, e.vr, _encode(e.vr, m[2])) + data[end:]
    if op == "delete":
        return data[:e.offset] + data[end:]
    if op == "length":
        if e.header == 12:
            return data[:e.offset + 8] + struct.pack("<I", m[2] & 0xFFFFFFFF) + data[e.offset + 12:]
        return data[:e.offset + 6] + struct.pack("<H", m[2] & 0xFFFF) + data[e.offset + 8:]
    if op == "vr":
        return data[:e.offset + 4] + m[2] + data[e.offset + 6:]
    raise ValueError(f"unknown DICOM mutation {m!r}")


# Tags the value mutations aim at, with the VR used when the element is inserted, and the values.
VALUE_VRS = {
    0x00020002: b"UI", 0x00020010: b"UI", 0x00080008: b"CS", 0x00080016: b"UI", 0x00080018: b"UI",
    0x00080060: b"CS", 0x00180050: b"DS", 0x00180088: b"DS", 0x0020000E: b"UI", 0x00200013: b"IS",
    0x00200032: b"DS", 0x00200037: b"DS", 0x00280002: b"US", 0x00280004: b"CS", 0x00280008: b"IS",
    0x00280010: b"US", 0x00280011: b"US", 0x00280030: b"DS", 0x00280100: b"US", 0x00280101: b"US",
    0x00280102: b"US", 0x00280103: b"US", 0x00281052: b"DS", 0x00281053: b"DS",
}
_US = [0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 24, 32, 64, 255, 4096, 65535]
_UIDS = ["", "1.2.3", "junk", "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.481.3",
         "1.2.840.10008.1.3.10", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.7"]
_NUMBERS = ["", "0", "-1", "1e-300", "1e38", "-1e38", "1e308", "nan", "inf", "-inf", "abc", "1.5", "99999999999"]
VALUES: dict[int, list] = {
    0x00020002: _UIDS, 0x00080016: _UIDS,
    0x00020010: ["", "junk", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                 "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.201"],
    0x00080008: ["", "ORIGINAL\\PRIMARY\\LOCALIZER", "DERIVED\\SECONDARY", "\\\\\\"],
    0x00080018: ["", "1.2.3"], 0x0020000E: ["", "1.2.3"],
    0x00080060: ["", "MR", "SEG", "RTSTRUCT", "XX", "CT\\MR"],
    0x00180050: _NUMBERS, 0x00180088: _NUMBERS, 0x00200013: _NUMBERS, 0x00280008: _NUMBERS + ["2", "4"],
    0x00281052: _NUMBERS, 0x00281053: _NUMBERS,
    0x00200032: ["", "nan\\0\\0", "0\\0", "0\\0\\0", "1e308\\0\\0", "abc\\def\\ghi", "-1e5\\0\\0", "0\\0\\0\\0"],
    0x00200037: ["", "0\\0\\0\\0\\0\\0", "1\\0\\0\\1\\0\\0", "1\\0\\0\\0\\1", "nan\\0\\0\\0\\1\\0",
                 "1e308\\0\\0\\0\\1\\0", "1\\0.1\\0\\0\\1\\0", "abc", "0\\1\\0\\1\\0\\0"],
    0x00280030: ["", "0\\0", "-1\\1", "nan\\1", "inf\\inf", "1", "1e308\\1", "abc\\1", "1\\1\\1", "1e-300\\1e-300"],
    0x00280004: ["", "MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL_422", "JUNK"],
    0x00280002: _US, 0x00280010: _US, 0x00280011: _US, 0x00280100: _US, 0x00280101: _US, 0x00280102: _US,
    0x00280103: _US,
}
VRS = [b"OB", b"OW", b"UN", b"SQ", b"UT", b"US", b"UL", b"SS", b"DS", b"IS", b"CS", b"UI", b"FD", b"AT", b"XX",
       b"\0\0"]
LENGTHS = [0, 1, 2, 3, 5, 255, 0xFFFF, 0x7FFFFFFF, UNDEFINED]


# ---- NIfTI-1 ---------------------------------------------------------------------------------------
# name -> (offset, struct format) in the 348-byte header
NIFTI_FIELDS = {
    "sizeof_hdr": (0, "<i"), "dim0": (40, "<h"), "dim1": (42, "<h"), "dim2": (44, "<h"), "dim3": (46, "<h"),
    "dim4": (48, "<h"), "datatype": (70, "<h"), "bitpix": (72, "<h"), "pixdim0": (76, "<f"), "pixdim1": (80, "<f"),
    "pixdim2": (84, "<f"), "pixdim3": (88, "<f"), "vox_offset": (108, "<f"), "scl_slope": (112, "<f"),
    "scl_inter": (116, "<f"), "qform_code": (252, "<h"), "sform_code": (254, "<h"), "quatern_b": (256, "<f"),
    "quatern_c": (260, "<f"), "qoffset_x": (268, "<f"), "srow_x0": (280, "<f"), "srow_x3": (292, "<f"),
    "srow_y1": (300, "<f"), "srow_z2": (320, "<f"), "magic": (344, "4s"),
}
_F = [0.0, -1.0, 1e-30, 1e30, 3.4e38, float("nan"), float("inf"), -float("inf")]
NIFTI_VALUES: dict[str, list] = {
    "sizeof_hdr": [0, 540, 1543569408, -1], "dim0": [0, 1, 2, 4, 5, 7, 8, -1, 300],
    "dim1": [0, 1, -1, 2, 32767], "dim2": [0, 1, -1, 32767], "dim3": [0, 1, -1, 2, 32767], "dim4": [0, 2, -1, 32767],
    "datatype": [0, 1, 2, 4, 8, 16, 32, 64, 128, 255, 256, 512, 768, 1536, 1792, 2304, 7, -1],
    "bitpix": [0, 1, 8, 64, -1], "pixdim0": [0.0, -1.0, 2.0, float("nan")],
    "vox_offset": [0.0, 1.0, 347.0, 352.0, 351.5, 1e9, -1.0, float("nan")],
    "qform_code": [-1, 0, 1, 2, 5, 999], "sform_code": [-1, 0, 1, 2, 5, 999],
    "magic": [b"ni1\0", b"n+2\0", b"junk", b"\0\0\0\0"],
}
for _n in NIFTI_FIELDS:
    NIFTI_VALUES.setdefault(_n, _F)


def mutate_nifti(raw: bytes, m: tuple) -> bytes:
    """Mutate an uncompressed .nii."""
    op = m[0]
    if op == "truncate":
        return raw[: int(len(raw) * m[1])]
    if op == "flip":
        at = int(352 * m[1])
        return raw[:at] + bytes([m[2]]) + raw[at + 1:]
    if op == "field":
        offset, fmt = NIFTI_FIELDS[m[1]]
        return raw[:offset] + struct.pack(fmt, m[2]) + raw[offset + struct.calcsize(fmt):]
    raise ValueError(f"unknown NIfTI mutation {m!r}")


def gunzip(data: bytes) -> bytes:
    return gzip.decompress(data)
