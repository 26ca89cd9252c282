"""Stored pixel values of one DICOM object, by the cheapest path that is exact.

    fast_plane(bytes, header)  a classic single-frame slice without a pydicom parse: a view of an
                               uncompressed buffer, or its codec called once (None: use decode_frames)
    decode_frames(bytes, uri)  (dataset, (frames, rows, cols) stored values): native buffers as
                               views, compressed data through pydicom's decoders
    rescale(ds, frame)         (slope, intercept) of a frame
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from unet_core.errors import (
    InputError,
    NoPixelDataError,
    ResourceLimitError,
    TruncatedFileError,
    UnreadableFileError,
    UnsupportedPixelDataError,
)
from unet_core.io.dicom.codestream import check_frame
from unet_core.io.dicom.fastscan import fast_pixels
from unet_core.io.dicom.header import DicomHeader, frame_item, frames_of, integer
from unet_core.io.dicom.parse import (
    DEFAULT_MAX_INFLATED,
    InflatingReader,
    inflating_reader,
    library_errors,
    parse,
    parse_deflated,
    value,
)

log = logging.getLogger(__name__)
CODECS_HINT = "install the codecs extra: pip install 'unet-ray[codecs]'"
_NATIVE_SYNTAXES = {pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian,
                    pydicom.uid.DeflatedExplicitVRLittleEndian}


def decoder_available(ts: UID) -> bool:
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(ts).is_available)
    except NotImplementedError:
        return False


def from_buffer(buf, bits: int, stored: int, signed: bool, samples: int, frames: int, rows: int,
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


def _native_frames(ds: pydicom.Dataset, ts: UID, frames: int, uri: str) -> np.ndarray | None:
    """Stored values of uncompressed little-endian monochrome pixel data, read straight from the
    buffer; None when another path must decode it."""
    if ts not in _NATIVE_SYNTAXES:
        return None
    try:
        bits = int(value(ds, "BitsAllocated", uri))
        return from_buffer(value(ds, "PixelData", uri), bits, int(value(ds, "BitsStored", uri, bits)),
                           int(value(ds, "PixelRepresentation", uri, 0)) == 1, int(value(ds, "SamplesPerPixel", uri, 1)),
                           frames, int(value(ds, "Rows", uri)), int(value(ds, "Columns", uri)))
    except (TypeError, ValueError):
        return None


def fast_plane(blob: bytes, header: DicomHeader) -> tuple[np.ndarray, tuple[float, float]] | None:
    """(stored (1, rows, cols), (slope, intercept)) of a classic single-frame slice on the fast
    path (no pydicom parse), or None."""
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
        arr = from_buffer(buf, bits, stored, signed, samples, 1, header.rows, header.columns)
        return (arr, (slope, intercept)) if arr is not None else None
    # A compressed slice: its codec once, through pydicom's decoder, without parsing the dataset
    # again. Any failure goes back to the pydicom path, which names the problem.
    ts = UID(f.file_meta.TransferSyntaxUID)
    if samples != 1 or not ts.is_transfer_syntax or not decoder_available(ts):
        return None
    try:
        (frame,) = generate_frames(bytes(buf), number_of_frames=1)
        check_frame(str(ts), frame, header.rows, header.columns, 1, bits, header.uri)
    except Exception:  # noqa: BLE001 - the pydicom path checks again and names the problem
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


def check_frames(ds: Any, syntax: str, frames: int, uri: str) -> None:
    """Every compressed frame's codestream header against the object's header, before any codec
    allocates what a frame declares (codestream.py)."""
    rows, columns = integer(ds, "Rows", uri), integer(ds, "Columns", uri)
    samples, bits = integer(ds, "SamplesPerPixel", uri) or 1, integer(ds, "BitsAllocated", uri)
    with library_errors(uri, "the encapsulated pixel data cannot be read"):
        encapsulated = value(ds, "PixelData", uri) or b""
        for frame in generate_frames(encapsulated, number_of_frames=frames):
            check_frame(syntax, frame, rows, columns, samples, bits, uri)


def _transfer_syntax(ds: pydicom.Dataset, uri: str) -> UID:
    meta = ds.file_meta
    if not str(value(meta, "TransferSyntaxUID", uri, "") or "").strip("\0 "):
        # Missing or empty: the encoding pydicom found the data set in says how pixels are stored.
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (
            pydicom.uid.ImplicitVRLittleEndian if implicit
            else pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian
        )
    return UID(meta.TransferSyntaxUID)


def _truncation(text: str, exc: BaseException) -> bool:
    return isinstance(exc, EOFError) or any(w in text.lower() for w in ("less than expected", "truncat", "end of",
                                                                          "insufficient"))


def _deflated_frames(reader: InflatingReader, uri: str) -> tuple[pydicom.Dataset, np.ndarray]:
    """(header without PixelData, (frames, rows, cols) stored values) of a deflated data set: the
    header inflated by pydicom through the reader, then the pixel data (native: deflate carries no
    compressed pixels) inflated straight into one buffer of the size the header declares, checked
    against what is left of the budget before it is allocated. Peak memory: the pixel data plus
    the reader's window (about 2 MiB); the stored values are a view of that buffer."""
    ds, at_pixels = parse_deflated(reader, uri)
    if not at_pixels:
        raise NoPixelDataError(f"{uri}: DICOM object has no pixel data", uri=uri)
    element = reader.read(12)  # tag, VR, 2 reserved bytes, 32-bit length (explicit VR little endian)
    if len(element) < 12 or element[4:6] not in (b"OB", b"OW"):
        raise UnreadableFileError(f"{uri}: the deflated data set's pixel data element cannot be read", uri=uri)
    length = int.from_bytes(element[8:12], "little")
    if length == 0xFFFFFFFF:
        raise UnsupportedPixelDataError(f"{uri}: encapsulated pixel data in a deflated data set is not a "
                                        "valid encoding", uri=uri)
    frames = frames_of(ds, uri)
    if frames < 1:
        raise UnreadableFileError(f"{uri}: NumberOfFrames is not a positive whole number", uri=uri)
    rows, columns = integer(ds, "Rows", uri), integer(ds, "Columns", uri)
    samples, bits = integer(ds, "SamplesPerPixel", uri) or 1, integer(ds, "BitsAllocated", uri)
    expected = rows * columns * frames * samples * bits // 8
    if expected > length:
        raise TruncatedFileError(f"{uri}: pixel data is truncated: {length} of {expected} bytes", uri=uri)
    if expected > reader.room:
        raise ResourceLimitError(f"{uri}: the deflated data set's pixel data ({expected} bytes) inflates beyond "
                                 f"{reader.limit} bytes (--max-decompressed-bytes); not read", uri=uri)
    buf = bytearray(expected)
    have = reader.readinto(buf)
    if have < expected:
        raise TruncatedFileError(f"{uri}: pixel data is truncated: {have} of {expected} bytes", uri=uri)
    try:
        stored = int(value(ds, "BitsStored", uri, bits) or bits)
        signed = int(value(ds, "PixelRepresentation", uri, 0) or 0) == 1
    except (TypeError, ValueError):
        stored, signed = 0, False
    pixels = from_buffer(buf, bits, stored, signed, samples, frames, rows, columns)
    if pixels is None:
        raise UnsupportedPixelDataError(f"{uri}: deflated pixel data of {samples} samples, {bits} bits allocated "
                                        f"and {stored} stored cannot be read", uri=uri)
    return ds, pixels


def decode_frames(data: bytes, uri: str, max_inflated: int = DEFAULT_MAX_INFLATED) -> tuple[pydicom.Dataset, np.ndarray]:
    """(dataset, raw stored values as (frames, rows, cols)) for one object. Uncompressed pixel data
    is a view of the buffer; compressed data goes through its codec once (pydicom's decoders)."""
    reader = inflating_reader(data, uri, max_inflated)
    if reader is not None:
        return _deflated_frames(reader, uri)
    ds, _ = parse(data, uri, stop_before_pixels=False, max_inflated=max_inflated)
    if "PixelData" not in ds:
        raise NoPixelDataError(f"{uri}: DICOM object has no pixel data", uri=uri)
    with library_errors(uri, "the transfer syntax cannot be read"):
        ts = _transfer_syntax(ds, uri)
    if not ts.is_transfer_syntax:
        raise UnsupportedPixelDataError(
            f"{uri}: TransferSyntaxUID is not a transfer syntax this reader knows; the pixel data "
            "cannot be interpreted", uri=uri)
    if ts.is_compressed and not decoder_available(ts):
        raise UnsupportedPixelDataError(
            f"{uri}: pixel data is compressed as {ts.name} ({ts}) and no decoder for it is "
            f"installed; {CODECS_HINT}", uri=uri,
        )
    frames = frames_of(ds, uri)
    if frames < 1:
        raise UnreadableFileError(f"{uri}: NumberOfFrames is not a positive whole number", uri=uri)
    if ts.is_compressed:
        check_frames(ds, str(ts), frames, uri)
    if not ts.is_compressed:
        expected = (integer(ds, "Rows", uri) * integer(ds, "Columns", uri) * frames
                    * (integer(ds, "SamplesPerPixel", uri) or 1) * (integer(ds, "BitsAllocated", uri) // 8))
        have = len(value(ds, "PixelData", uri) or b"")
        if have < expected:
            raise TruncatedFileError(f"{uri}: pixel data is truncated: {have} of {expected} bytes", uri=uri)
        native = _native_frames(ds, ts, frames, uri)
        if native is not None:
            return ds, native
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - the decoder call alone; decoders raise many types
        log.debug("%s: decoding %s: %s: %s", uri, ts.name, type(exc).__name__, exc)
        if _truncation(str(exc), exc):
            raise TruncatedFileError(f"{uri}: pixel data is truncated ({type(exc).__name__} in the decoder)",
                                     uri=uri) from None
        raise UnsupportedPixelDataError(f"{uri}: pixel data in {ts.name} cannot be decoded "
                                        f"({type(exc).__name__} in the decoder)", uri=uri) from None
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.ndim != 3 or pixels.shape[0] != frames:
        raise UnsupportedPixelDataError(
            f"{uri}: decoded pixels have shape {pixels.shape}, expected ({frames}, rows, columns) "
            "of one sample per pixel", uri=uri,
        )
    return ds, pixels


def rescale(ds: Any, frame: int, uri: str) -> tuple[float, float]:
    item = frame_item(ds, frame, "PixelValueTransformationSequence", uri)
    source = item if item is not None and "RescaleSlope" in item else ds
    try:
        return (float(value(source, "RescaleSlope", uri, 1.0) or 1.0),
                float(value(source, "RescaleIntercept", uri, 0.0) or 0.0))
    except (TypeError, ValueError):
        return 1.0, 0.0


def same_pixels(a: bytes, b: bytes, uri_a: str, uri_b: str) -> bool | None:
    """Whether two objects (copies of one SOP instance) hold the same stored pixel values with the
    same rescale, whatever their transfer syntaxes; None when either cannot be decoded."""
    if a == b:
        return True
    try:
        ds_a, pixels_a = decode_frames(a, uri_a)
        ds_b, pixels_b = decode_frames(b, uri_b)
        scales = [rescale(ds_a, f, uri_a) for f in range(len(pixels_a))], [rescale(ds_b, f, uri_b)
                                                                            for f in range(len(pixels_b))]
    except InputError:
        return None
    return pixels_a.shape == pixels_b.shape and bool(np.array_equal(pixels_a, pixels_b)) and scales[0] == scales[1]
