"""What a compressed frame says about itself, read from its codestream header before any codec runs.

A codec allocates what its codestream declares, not what the DICOM header says: a 4 KB JPEG 2000
frame that declares 30000 x 30000 pixels inside an object that declares 16 x 16 would take
gigabytes to decode. So each frame's declared size is read from its own header (JPEG SOF, JPEG-LS
SOF55, JPEG 2000 SIZ, the RLE segment count) and must agree with Rows, Columns, samples and bits.

    frame_shape(syntax, frame) -> FrameShape | None   (None: a syntax whose header is not read here)
    check_frame(syntax, frame, rows, columns, samples, bits, uri)   raises InvalidPixelDataError
"""
from __future__ import annotations

from dataclasses import dataclass
from struct import unpack_from

from unet_core.errors import InvalidPixelDataError

JPEG = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}  # baseline, extended, lossless, JPEG-LS
J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
       "1.2.840.10008.1.2.4.203"}  # JPEG 2000 and HTJ2K
RLE = "1.2.840.10008.1.2.5"
# Start-of-frame markers: SOF0-3, 5-7, 9-11, 13-15 (JPEG) and SOF55 (JPEG-LS).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # markers without a length: TEM, RSTn


@dataclass(frozen=True)
class FrameShape:
    rows: int
    columns: int
    samples: int
    bits: int  # sample precision (JPEG, JPEG 2000) or bytes per sample x 8 (RLE segments)


def _jpeg(frame: bytes) -> FrameShape | None:
    if frame[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = unpack_from(">H", frame, pos + 2)
        if marker in _SOF:
            if pos + 10 > len(frame):
                return None
            precision, rows, columns, samples = unpack_from(">BHHB", frame, pos + 4)
            return FrameShape(rows, columns, samples, precision)
        if marker == 0xDA or length < 2:  # start of scan before any frame header
            return None
        pos += 2 + length
    return None


def _j2k(frame: bytes) -> FrameShape | None:
    start = frame.find(b"\xff\x4f\xff\x51", 0, 4096)  # SOC then SIZ (after the JP2 boxes, if any)
    if start < 0 or start + 4 + 38 + 3 > len(frame):
        return None
    pos = start + 4 + 2 + 2  # Lsiz, Rsiz
    xsiz, ysiz, xosiz, yosiz = unpack_from(">IIII", frame, pos)
    (components,) = unpack_from(">H", frame, pos + 32)
    precision = (frame[pos + 34] & 0x7F) + 1
    return FrameShape(ysiz - yosiz, xsiz - xosiz, components, precision)


def frame_shape(syntax: str, frame: bytes) -> FrameShape | None:
    if syntax in JPEG:
        return _jpeg(frame)
    if syntax in J2K:
        return _j2k(frame)
    return None


def check_frame(syntax: str, frame: bytes, rows: int, columns: int, samples: int, bits: int, uri: str) -> None:
    """A frame whose codestream declares another size, another number of samples or more bits per
    sample than the header: InvalidPixelDataError (the frame is never decoded). An RLE frame must
    hold samples x bytes-per-sample segments."""
    if syntax == RLE:
        if len(frame) < 64:
            raise InvalidPixelDataError(f"{uri}: an RLE frame of {len(frame)} bytes has no RLE header", uri=uri)
        (segments,) = unpack_from("<I", frame, 0)
        want = samples * -(-bits // 8)
        if segments != want:
            raise InvalidPixelDataError(f"{uri}: the RLE frame has {segments} segments; {samples} sample(s) of "
                                        f"{bits} bits need {want}", uri=uri)
        return
    shape = frame_shape(syntax, frame)
    if shape is None:
        if syntax in JPEG or syntax in J2K:
            raise InvalidPixelDataError(f"{uri}: the compressed frame has no readable codestream header", uri=uri)
        return
    if (shape.rows, shape.columns) != (rows, columns) or shape.samples != samples or shape.bits > bits:
        raise InvalidPixelDataError(
            f"{uri}: the compressed frame declares {shape.rows} x {shape.columns} pixels, {shape.samples} sample(s) of "
            f"{shape.bits} bits; the header says {rows} x {columns}, {samples} of at most {bits}: not decoded",
            uri=uri)
