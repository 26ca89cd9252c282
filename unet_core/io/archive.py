"""`.zip` exports of DICOM folders, read in memory without extracting to disk.

A member is addressed as `<zip uri>!/<member path>`. Members whose path is absolute or climbs out
of the archive (`..`), entries beyond the member budget and members that would expand beyond the
decompression budget are refused with a reason; the other members are still read.
"""
from __future__ import annotations

import io
import posixpath
import re
import zipfile
from dataclasses import dataclass

from unet_core.config import Limits
from unet_core.errors import (
    ErrorType,
    InputError,
    ResourceLimitError,
    TruncatedFileError,
    UnreadableFileError,
    library_error,
)
from unet_core.io import storage

SEPARATOR = "!/"


def is_zip_name(uri: str) -> bool:
    return uri.lower().endswith(".zip")


_MEMBER = re.compile(r"\.zip" + re.escape(SEPARATOR), re.IGNORECASE)


def split_member(uri: str) -> tuple[str, str | None]:
    """('s3://b/x.zip', 'dir/a.dcm') for a member URI; (uri, None) otherwise. "!/" separates a
    member only right after a ".zip" name: a folder named `scan!` is just a folder."""
    m = _MEMBER.search(uri)
    if m is None:
        return uri, None
    return uri[:m.start() + 4], uri[m.end():]


@dataclass(frozen=True)
class Member:
    uri: str
    name: str
    size: int
    error: str = ""  # non-empty: refused, with this reason
    error_type: ErrorType | None = None  # why it is refused: unsafe_archive_member or resource_limit


def _unsafe(name: str) -> bool:
    norm = posixpath.normpath(name.replace("\\", "/"))
    return name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or norm == ".." or norm.startswith("../")


def _open(fileobj, uri: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise TruncatedFileError(f"{uri}: not a readable zip archive ({library_error(exc)})", uri=uri) from exc


SHARED_ARCHIVES = 4  # archives a process keeps open (on S3 each holds one range of at most RANGE_BYTES)
_SHARED: dict[tuple, Archive] = {}
RANGE_BYTES = storage.RANGE_BYTES  # most one ranged read of a stored zip fetches beyond the member asked for
_MIN_RANGE = 64 * 1024  # a read outside any member (the central directory): at least this much


class _Ranges(io.RawIOBase):
    """A stored zip (S3) as a seekable file that fetches ranges sized to what is read next. Reading
    a member at its local header fetches the member and the members after it in the same folder
    (one series, in an export), up to RANGE_BYTES; other reads fetch what they ask for. A fixed
    8 MiB read-ahead fetched 90x the bytes a volume of small slices uses (docs/benchmarks.md)."""

    def __init__(self, handle: io.BufferedReader, size: int):
        super().__init__()
        # The buffered handle is kept (and closed) with its raw file: collecting it closes the raw.
        self._handle, self._raw, self._size, self._pos = handle, handle.raw, size, 0
        self._start, self._data = 0, b""  # the range held
        self.plan: dict[int, int] = {}  # a member's header offset -> the end of the range to fetch
        self.fetched = self.reads = 0  # bytes and ranged reads sent to the store

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b) -> int:
        out = memoryview(b).cast("B")
        want = min(len(out), self._size - self._pos)
        if want <= 0:
            return 0
        if not (self._start <= self._pos and self._pos + want <= self._start + len(self._data)):
            planned = self.plan.get(self._pos)
            end = min(self._size, max(planned, self._pos + want) if planned else self._pos + max(want, _MIN_RANGE))
            self._data = b""  # the old range goes before the new one arrives
            self._data, self._start = self._raw.read_at(end - self._pos, self._pos), self._pos
            self.fetched, self.reads = self.fetched + len(self._data), self.reads + 1
        at = self._pos - self._start
        n = min(want, len(self._data) - at)
        out[:n] = self._data[at:at + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._data = b""
        self._handle.close()
        super().close()


def _plan(infos: list[zipfile.ZipInfo], directory_start: int) -> dict[int, int]:
    """For each member's header offset, where the range fetched when it is read ends: its own end,
    extended over the members stored after it in the same folder while the range stays within
    RANGE_BYTES. A member ends where the next one (or the central directory) begins."""
    ordered = sorted(infos, key=lambda i: i.header_offset)
    ends = [i.header_offset for i in ordered[1:]] + [directory_start]
    folders = [posixpath.dirname(i.filename) for i in ordered]
    plan, j = {}, 0
    for i, info in enumerate(ordered):
        j = max(j, i)
        while (j + 1 < len(ordered) and folders[j + 1] == folders[i]
               and ends[j + 1] - info.header_offset <= RANGE_BYTES):
            j += 1
        plan[info.header_offset] = ends[j]
    return plan


class Archive:
    """One zip export opened once: its central directory read once, every member read through the
    same handle. A stored archive is opened for random access (local: the file; S3: ranged reads),
    so reading a member fetches that member's bytes, never the whole archive again."""

    def __init__(self, fileobj, uri: str, limits: Limits | None = None):
        self.uri, self.limits = uri, limits or Limits()
        self._file = fileobj
        self.zf = _open(fileobj, uri)
        if isinstance(fileobj, _Ranges):
            fileobj.plan = _plan(self.zf.infolist(), self.zf.start_dir)

    @classmethod
    def open(cls, uri: str, limits: Limits | None = None) -> Archive:
        limits = limits or Limits()
        return cls._open_checked(uri, limits, storage.stat(uri)[0])

    @classmethod
    def _open_checked(cls, uri: str, limits: Limits, size: int) -> Archive:
        if size > limits.max_file_bytes:
            raise ResourceLimitError(f"{uri}: {size} bytes, above the limit of {limits.max_file_bytes} "
                                     "(--max-file-bytes)", uri=uri)
        handle = storage.open_random_access(uri)
        if hasattr(getattr(handle, "raw", None), "read_at"):  # a stored object (S3): ranges sized to the members read
            return cls(_Ranges(handle, size), uri, limits)
        return cls(handle, uri, limits)

    @classmethod
    def shared(cls, uri: str, limits: Limits | None = None) -> Archive:
        """The archive opened once per process and kept open for the next caller, while the stored
        object is unchanged (same size and modification time): the volumes of one export, decoded
        one after the other by a worker, read its central directory once (0.1 s for 20,000
        members), not once per volume. The few most recent archives are kept; do not close it."""
        limits = limits or Limits()
        size, mtime = storage.stat(uri)
        key = (uri, size, mtime, limits)
        found = _SHARED.pop(key, None)
        if found is None:
            found = cls._open_checked(uri, limits, size)
        _SHARED[key] = found  # most recent last
        while len(_SHARED) > SHARED_ARCHIVES:
            _SHARED.pop(next(iter(_SHARED))).close()
        return found

    def members(self) -> list[Member]:
        """Every file member, with a refusal reason on those that cannot be read safely."""
        infos = [i for i in self.zf.infolist() if not i.is_dir()]
        if len(infos) > self.limits.max_zip_members:
            raise ResourceLimitError(f"{self.uri}: {len(infos)} members exceed the limit of "
                                     f"{self.limits.max_zip_members}", uri=self.uri)
        out = []
        for info in infos:
            member_uri = f"{self.uri}{SEPARATOR}{info.filename}"
            error, kind = "", ErrorType.UNSAFE_ARCHIVE_MEMBER
            if _unsafe(info.filename):
                error = f"{member_uri}: member path escapes the archive folder; refused"
            elif info.file_size > self.limits.max_decompressed_bytes:
                error = (f"{member_uri}: expands to {info.file_size} bytes, beyond the limit of "
                         f"{self.limits.max_decompressed_bytes} (--max-decompressed-bytes)")
                kind = ErrorType.RESOURCE_LIMIT
            elif info.flag_bits & 0x1:
                error = f"{member_uri}: encrypted member; refused"
            out.append(Member(member_uri, info.filename, info.file_size, error, kind if error else None))
        return out

    def offset(self, name: str) -> int:
        """Where a member is stored (-1 when there is no such member): reading members in this
        order reads the archive forwards, each range fetched once."""
        try:
            return self.zf.getinfo(name).header_offset
        except KeyError:
            return -1

    def read(self, name: str) -> bytes:
        """One member's bytes, read with a hard decompression limit (declared sizes can lie)."""
        limit = self.limits.max_decompressed_bytes
        member_uri = f"{self.uri}{SEPARATOR}{name}"
        if _unsafe(name):
            raise UnreadableFileError(f"{member_uri}: member path escapes the archive folder; refused",
                                      uri=member_uri)
        try:
            with self.zf.open(name) as f:
                out = f.read(limit + 1)
        except KeyError as exc:
            raise InputError(f"{member_uri}: no such member", uri=member_uri) from exc
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise TruncatedFileError(f"{member_uri}: cannot be decompressed ({library_error(exc)})",
                                     uri=member_uri) from exc
        if len(out) > limit:
            raise ResourceLimitError(f"{member_uri}: expands beyond the limit of {limit} bytes", uri=member_uri)
        return out

    def close(self) -> None:
        self.zf.close()
        self._file.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def list_members(data: bytes, uri: str, limits: Limits | None = None) -> list[Member]:
    """`Archive.members` of an archive held in memory."""
    with Archive(io.BytesIO(data), uri, limits) as a:
        return a.members()


def read_member(data: bytes, uri: str, name: str, limits: Limits | None = None) -> bytes:
    """`Archive.read` of an archive held in memory."""
    with Archive(io.BytesIO(data), uri, limits) as a:
        return a.read(name)
