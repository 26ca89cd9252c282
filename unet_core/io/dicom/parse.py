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


INFLATE_STEP = 1 << 20  # most a single inflate call produces: the reader's only transient buffer
_INPUT_STEP = 64 << 10  # compressed bytes fed per call (zlib copies what it leaves unconsumed)
_LOOKBACK = 64 << 10  # inflated bytes kept behind the position: pydicom steps back over a peeked tag
# A header value larger than this is skipped while inflating, never held (a private blob, a
# bomb); an enhanced object's functional groups stay well below it.
HEADER_VALUE_LIMIT = 16 << 20


class InflatingReader(io.RawIOBase):
    """A deflated data set (PS3.5 A.5) read as a file, inflated as it is read: the preamble and the
    file meta rewritten as explicit VR little endian, then the inflated data set. Never inflates
    past `limit` bytes (ResourceLimitError); holds the bytes around the position only (a forward
    seek inflates and drops what it passes over). pydicom reads it like any explicit VR little
    endian file, which it would otherwise inflate whole, with no bound (docs/design.md)."""

    def __init__(self, head: bytes, deflated: memoryview, uri: str, limit: int):
        super().__init__()
        self.uri, self.limit = uri, limit
        self._head, self._src, self._src_pos, self._tail = head, deflated, 0, b""
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self._win, self._win_start, self._pos = bytearray(), len(head), 0
        self.inflated = 0  # bytes of the data set inflated so far
        self.ended = False  # the deflate stream ended (z.eof)
        self.starved = False  # the compressed bytes ran out before the stream ended (a prefix, or cut)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def _inflate(self) -> bytes:
        """The next piece of the data set ("" at its end), counted against the limit."""
        while not (self.ended or self.starved):
            if not self._tail:
                self._tail = self._src[self._src_pos:self._src_pos + _INPUT_STEP]
                self._src_pos += len(self._tail)
                if not self._tail:
                    self.starved = True
                    break
            try:
                piece = self._z.decompress(self._tail, min(INFLATE_STEP, self.limit + 1 - self.inflated))
            except zlib.error:
                raise UnreadableFileError(f"{self.uri}: the deflated data set is not a deflate stream",
                                          uri=self.uri) from None
            self._tail = self._z.unconsumed_tail
            self.ended = self._z.eof
            self.inflated += len(piece)
            if self.inflated > self.limit:
                raise ResourceLimitError(f"{self.uri}: the deflated data set inflates beyond {self.limit} bytes "
                                         "(--max-decompressed-bytes); not read", uri=self.uri)
            if piece:
                return piece
        return b""

    def _cover(self, end: int) -> None:
        """Inflate until the window reaches absolute offset `end` (or the stream ends). Bytes
        before the window's start are dropped as they are inflated, never held."""
        while self._win_start + len(self._win) < end:
            piece = self._inflate()
            if not piece:
                return
            if not self._win and self._win_start + len(piece) <= self._pos:
                self._win_start += len(piece)  # wholly before the position: passed over
                continue
            if not self._win and self._win_start < self._pos:
                piece, self._win_start = piece[self._pos - self._win_start:], self._pos
            self._win += piece

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos}.get(whence)
        if target is None:
            raise OSError("an inflating reader cannot seek from its end")
        target += offset
        if len(self._head) <= target < self._win_start:
            raise OSError(f"seek back to {target}: before the inflated window")
        if target > self._win_start + len(self._win):  # forward past the window: pass over
            self._win_start += len(self._win)
            self._win.clear()
        self._pos = target
        return target

    def readinto(self, b) -> int:
        out, n = memoryview(b).cast("B"), 0
        if self._pos < len(self._head):
            chunk = self._head[self._pos:self._pos + len(out)]
            out[:len(chunk)] = chunk
            n, self._pos = len(chunk), self._pos + len(chunk)
        if n < len(out) and self._pos < self._win_start:
            raise OSError(f"read at {self._pos}: before the inflated window")
        while n < len(out):
            self._cover(self._pos + 1)
            at = self._pos - self._win_start
            k = min(len(out) - n, len(self._win) - at)
            if k <= 0:
                break  # the end of the stream (or of the bytes given)
            with memoryview(self._win) as view:
                out[n:n + k] = view[at:at + k]
            n, self._pos = n + k, self._pos + k
            behind = self._pos - self._win_start
            if behind > 2 * _LOOKBACK:  # a large read (pixel data) keeps only a little behind it
                del self._win[:behind - _LOOKBACK]
                self._win_start += behind - _LOOKBACK
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            raise OSError("an inflating reader reads sized values only")
        if size > self.room:  # a value declared larger than the budget allows: never allocated
            raise ResourceLimitError(f"{self.uri}: the deflated data set inflates beyond {self.limit} bytes "
                                     "(--max-decompressed-bytes); not read", uri=self.uri)
        buf = bytearray(size)
        return bytes(buf[:self.readinto(buf)])

    @property
    def room(self) -> int:
        """How many bytes from the position on can still be read within the limit."""
        return self.limit - self.inflated + max(0, self._win_start + len(self._win) - self._pos)

    def peek_tag(self) -> int | None:
        """The (group << 16 | element) of the element at the position, without moving."""
        at = self._pos
        raw = self.read(4)
        self.seek(at)
        return int.from_bytes(raw[:2], "little") << 16 | int.from_bytes(raw[2:], "little") if len(raw) == 4 else None


def inflating_reader(data: bytes, uri: str, max_inflated: int) -> InflatingReader | None:
    """A reader of a deflated data set, or None when `data` is not one. pydicom would inflate it
    whole (`zlib.decompress`, no limit): a small object can inflate to gigabytes."""
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
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    head = io.BytesIO()
    head.write(data[:128] + b"DICM")
    with library_errors(uri, "the file meta information cannot be written"):
        filewriter.write_file_meta_info(head, meta, enforce_standard=False)
    return InflatingReader(head.getvalue(), memoryview(data)[start:], uri, max_inflated)


def parse_deflated(reader: InflatingReader, uri: str) -> tuple[pydicom.Dataset, bool]:
    """(the header up to the pixel data, whether pixel data follows) of a deflated data set,
    inflating only as far as the header goes (values over HEADER_VALUE_LIMIT passed over). The
    reader is left at the pixel data element."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(reader, stop_before_pixels=True, defer_size=HEADER_VALUE_LIMIT)
        except UnetError:
            raise
        except Exception as exc:  # noqa: BLE001 - the library call alone
            log.debug("%s: dcmread (deflated): %s: %s", uri, type(exc).__name__, exc)
            raise TruncatedFileError(f"{uri}: DICOM header cannot be parsed ({type(exc).__name__}); the file is "
                                     "truncated or corrupt", uri=uri) from None
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    tag = reader.peek_tag()
    return ds, tag is not None and tag >> 16 == PIXEL_GROUP


def parse(data: bytes, uri: str, stop_before_pixels: bool,
          max_inflated: int = DEFAULT_MAX_INFLATED) -> tuple[pydicom.Dataset, int]:
    """Dataset and the offset where parsing stopped. Raises EmptyFileError, NotDicomError (no
    'DICM' prefix and nothing parseable) or TruncatedFileError (a prefixed file pydicom cannot
    parse, or one that ends inside an element). A deflated data set is inflated within
    `max_inflated` bytes (ResourceLimitError beyond), its header only (`stop_before_pixels` must be
    True): its offset is then into the inflated stream."""
    if not data:
        raise EmptyFileError(f"{uri}: empty file (0 bytes)", uri=uri)
    reader = inflating_reader(data, uri, max_inflated)
    if reader is not None:
        if not stop_before_pixels:
            raise ValueError("a deflated data set's pixels are read by pixels.decode_frames (within the budget)")
        ds, _ = parse_deflated(reader, uri)
        return ds, reader.tell()
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
