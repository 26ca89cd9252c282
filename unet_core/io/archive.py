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
    InputError,
    ResourceLimitError,
    TruncatedFileError,
    UnreadableFileError,
    library_error,
)

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


def _unsafe(name: str) -> bool:
    norm = posixpath.normpath(name.replace("\\", "/"))
    return name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or norm == ".." or norm.startswith("../")


def _open(data: bytes, uri: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise TruncatedFileError(f"{uri}: not a readable zip archive ({library_error(exc)})", uri=uri) from exc


def list_members(data: bytes, uri: str, limits: Limits | None = None) -> list[Member]:
    """Every file member, with a refusal reason on those that cannot be read safely."""
    limits = limits or Limits()
    out = []
    with _open(data, uri) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > limits.max_zip_members:
            raise ResourceLimitError(f"{uri}: {len(infos)} members exceed the limit of {limits.max_zip_members}", uri=uri)
        for info in infos:
            member_uri = f"{uri}{SEPARATOR}{info.filename}"
            error = ""
            if _unsafe(info.filename):
                error = f"{member_uri}: member path escapes the archive folder; refused"
            elif info.file_size > limits.max_decompressed_bytes:
                error = (f"{member_uri}: expands to {info.file_size} bytes, beyond the limit of "
                         f"{limits.max_decompressed_bytes}")
            elif info.flag_bits & 0x1:
                error = f"{member_uri}: encrypted member; refused"
            out.append(Member(member_uri, info.filename, info.file_size, error))
    return out


def read_member(data: bytes, uri: str, name: str, limits: Limits | None = None) -> bytes:
    """One member's bytes, read with a hard decompression limit (declared sizes can lie)."""
    limits = limits or Limits()
    member_uri = f"{uri}{SEPARATOR}{name}"
    if _unsafe(name):
        raise UnreadableFileError(f"{member_uri}: member path escapes the archive folder; refused", uri=member_uri)
    with _open(data, uri) as zf:
        try:
            with zf.open(name) as f:
                out = f.read(limits.max_decompressed_bytes + 1)
        except KeyError as exc:
            raise InputError(f"{member_uri}: no such member", uri=member_uri) from exc
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise TruncatedFileError(f"{member_uri}: cannot be decompressed ({library_error(exc)})", uri=member_uri) from exc
    if len(out) > limits.max_decompressed_bytes:
        raise ResourceLimitError(
            f"{member_uri}: expands beyond the limit of {limits.max_decompressed_bytes} bytes", uri=member_uri
        )
    return out
