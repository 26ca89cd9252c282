"""Bytes to a pydicom dataset, and the one place where pydicom's exceptions become ours.

pydicom converts element values lazily: a value whose length does not fit its VR, or a number
that is not one, raises wherever the value is first used, with whatever exception type pydicom
chose. So every read of a dataset's values in this package goes through `value` (or runs inside
`library_errors`), which turns any exception raised by pydicom or a codec into an
`UnreadableFileError` naming the object: a fixed message with the exception's type, never its
text (that can quote the value, which can be patient data); the text goes to the debug log only.
An exception raised by this project's own code is not converted: it stays an internal error, a
bug to fix, which is what the fuzzer (tests/test_fuzz.py) looks for.
"""
from __future__ import annotations

import hashlib
import io
import logging
import re
import warnings
import zlib
from contextlib import contextmanager
from typing import Any, Iterator

import pydicom
from pydicom import filereader, filewriter

from unet_core.config import Limits
from unet_core.errors import (
    EmptyFileError,
    NotDicomError,
    ResourceLimitError,
    TruncatedFileError,
    UnetError,
    UnreadableFileError,
)

log = logging.getLogger(__name__)

# pydicom's own validation of values on reading warns and logs them verbatim ("Invalid value for VR
# DA: '<the value>'"), and a value can be patient data: off. Values are checked where they are used.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

HEADER_PREFIX_BYTES = 64 * 1024  # what the header scan reads first; the whole object only when needed
PIXEL_GROUP = 0x7FE0
DEFLATED_UID = pydicom.uid.DeflatedExplicitVRLittleEndian.encode()
DEFAULT_MAX_INFLATED = Limits().max_decompressed_bytes


def unreadable(uri: str, exc: BaseException, what: str = "DICOM data cannot be interpreted") -> UnreadableFileError:
    """The error an exception of pydicom or a codec on one object's data stands for."""
    log.debug("%s: %s: %s: %s", uri, what, type(exc).__name__, exc)
    return UnreadableFileError(f"{uri}: {what} ({type(exc).__name__} in the DICOM library)", uri=uri)


@contextmanager
def library_errors(uri: str, what: str = "DICOM data cannot be interpreted") -> Iterator[None]:
    """Run a call into pydicom or a codec: its exceptions become `unreadable(uri)`. Wrap only the
    library call itself, so that this project's own bugs are never taken for bad data."""
    try:
        yield
    except UnetError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom and codecs raise many types for bad data
        raise unreadable(uri, exc, what) from None


def value(ds: Any, keyword: str, uri: str, default: Any = None) -> Any:
    """`ds.get(keyword, default)`, with pydicom's conversion errors as the object's error. A plain
    try (free when nothing is raised), not `library_errors`: the header scan calls this about 25
    times per object, and a context manager's entry and exit were a fifth of the scan."""
    try:
        return ds.get(keyword, default)
    except UnetError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom converts values lazily and raises many types
        raise unreadable(uri, exc, f"{keyword} cannot be read") from None


def text(ds: Any, keyword: str) -> str:
    """A descriptive value as text; "" when it is absent or cannot be interpreted (a description
    never decides whether a volume can be segmented)."""
    try:
        return str(value(ds, keyword, "") or "")
    except UnreadableFileError:
        return ""


_CS = re.compile(r"[A-Z0-9 _]{0,16}")


def code_string(raw: Any) -> str:
    """A CS value (Modality, ImageType values, BodyPartExamined) as stored data, or "" when it is
    not a valid code string: such columns never carry free text (a name put in the wrong field)."""
    values = [raw] if isinstance(raw, str) else list(raw or [])
    out = [str(v).strip() for v in values]
    return "\\".join(out) if all(_CS.fullmatch(v) for v in out) else ""


_UID = re.compile(r"[0-9.]{1,128}")


def uid_string(raw: Any) -> str:
    """A UID as stored data: as it is when it is made of digits and dots; other text (a name put
    in the wrong field) becomes a UID derived from it, "2.25." and 39 digits, so objects that share
    it still group together and the text itself is never stored."""
    text = str(raw or "").strip("\0 ")
    if not text or _UID.fullmatch(text):
        return text
    return "2.25." + str(int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()[:16], "big"))


def transfer_syntax(ds: Any, uri: str) -> str:
    """The file meta's TransferSyntaxUID ("" when there is none)."""
    with library_errors(uri, "TransferSyntaxUID cannot be read"):
        return uid_string(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None))


def _inflated(data: bytes, uri: str, max_inflated: int) -> bytes | None:
    """A deflated data set (PS3.5 A.5) rewritten as explicit VR little endian, inflated by a
    bounded stream (never past `max_inflated` bytes: a small object can inflate to gigabytes);
    None when `data` is not deflated. pydicom would inflate it whole, with no bound."""
    if DEFLATED_UID not in data[:4096]:
        return None
    if not (len(data) >= 132 and data[128:132] == b"DICM"):
        raise UnreadableFileError(f"{uri}: a deflated data set without the DICOM preamble: not read (it cannot be "
                                  "inflated within a budget)", uri=uri)
    fp = io.BytesIO(data)
    fp.seek(132)
    with library_errors(uri, "the file meta information cannot be read"):
        meta = filereader._read_file_meta_info(fp)
    if str(meta.get("TransferSyntaxUID", "")) != pydicom.uid.DeflatedExplicitVRLittleEndian:
        return None
    start = fp.tell()
    stream = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        body = stream.decompress(data[start:], max_inflated + 1)
    except zlib.error:
        raise UnreadableFileError(f"{uri}: the deflated data set is not a deflate stream", uri=uri) from None
    if len(body) > max_inflated or stream.unconsumed_tail:
        raise ResourceLimitError(f"{uri}: the deflated data set inflates beyond {max_inflated} bytes "
                                 "(--max-decompressed-bytes); not read", uri=uri)
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    out = io.BytesIO()
    out.write(data[:128] + b"DICM")
    with library_errors(uri, "the file meta information cannot be written"):
        filewriter.write_file_meta_info(out, meta, enforce_standard=False)
    out.write(body)
    return out.getvalue()


def parse(data: bytes, uri: str, stop_before_pixels: bool,
          max_inflated: int = DEFAULT_MAX_INFLATED) -> tuple[pydicom.Dataset, int]:
    """Dataset and the offset where parsing stopped. Raises EmptyFileError, NotDicomError (no
    'DICM' prefix and nothing parseable) or TruncatedFileError (a prefixed file pydicom cannot
    parse, or one that ends inside an element). A deflated data set is inflated within
    `max_inflated` bytes (ResourceLimitError beyond); its offsets are then into the inflated bytes."""
    if not data:
        raise EmptyFileError(f"{uri}: empty file (0 bytes)", uri=uri)
    inflated = _inflated(data, uri, max_inflated)
    if inflated is not None:
        ds, stop = parse(inflated, uri, stop_before_pixels)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
        return ds, stop
    fp = io.BytesIO(data)
    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels, force=not has_preamble)
        # dcmread raises many types on bad bytes (OSError / struct.error inside a sequence that
        # runs past the end, zlib.error for a deflated syntax over bytes that are not deflate, ...)
        except Exception as exc:  # noqa: BLE001 - the library call alone
            log.debug("%s: dcmread: %s: %s", uri, type(exc).__name__, exc)
            if has_preamble:
                raise TruncatedFileError(f"{uri}: DICOM header cannot be parsed ({type(exc).__name__}); the file is "
                                         "truncated or corrupt", uri=uri) from None
            raise NotDicomError(f"{uri}: not a DICOM file (no 'DICM' prefix and no parseable dataset)",
                                uri=uri) from None
    if not has_preamble:
        uid = str(value(ds, "SOPClassUID", uri, "") or "")
        if not (uid and all(p.isdigit() for p in uid.split("."))):
            raise NotDicomError(f"{uri}: not a DICOM file (no 'DICM' prefix and no SOP Class UID)", uri=uri)
    if fp.tell() >= len(data) and _cut_short(ds, uri):
        raise TruncatedFileError(f"{uri}: DICOM data ends inside an element (file truncated)", uri=uri)
    return ds, fp.tell()


def _cut_short(ds: pydicom.Dataset, uri: str) -> bool:
    """True when parsing hit the end of the bytes mid-element, or before the dataset began."""
    with library_errors(uri, "MediaStorageSOPClassUID cannot be read"):
        meta_class = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    if len(ds) == 0:
        return bool(meta_class)
    last = ds._dict[list(ds._dict)[-1]]  # raw, not yet converted: its declared length is kept
    length = getattr(last, "length", None)
    raw = getattr(last, "value", None)
    return length not in (None, 0xFFFFFFFF) and raw is not None and len(raw) < length
