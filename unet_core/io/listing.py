"""Listing an archive: streaming, one level at a time when asked, safe on real file shares.

    list_level(prefix)                    -> Level: sub-prefixes, and whether objects sit directly
                                             below; what a listing fan-out expands
    iter_objects(prefix, recursive, ...)  -> ObjectEntry(uri, size, version), streamed

Rules (docs/design.md, "Listing"):
- Hidden names are skipped: any file or folder whose name starts with "." (our own `.tmp-*`
  temporaries, editors' and operating systems' files such as `.DS_Store`, `.snapshot` folders).
- Local directory symlinks are not followed unless `follow_symlinks`. Then a link whose target is
  inside one of the listing's inputs is still skipped (that folder is listed where it is), and a
  folder outside them is walked once per listing unit, its real paths remembered: a loop can
  neither repeat the archive nor hang the job. File symlinks follow the same rule (listed as
  `not_read` without `follow_symlinks`); a dangling one fails when read. FIFOs, sockets and
  devices are listed as `not_read`, never opened.
- Any name the filesystem allows is listed and read: one that is not UTF-8 or holds control
  characters is named by a percent-encoded `file://` URI (`storage.local_uri`).
- `version` says whether an object changed: the S3 ETag, or the local mtime in nanoseconds.
- On S3 a level is one delimiter listing (1,000 keys per request); keys ending in "/" are folder
  markers, not objects.
"""
from __future__ import annotations

import functools
import os
import stat
from dataclasses import dataclass
from typing import Iterator

from unet_core.errors import NotFoundError, StorageError
from unet_core.io import dicomweb, storage


@dataclass(frozen=True)
class ObjectEntry:
    uri: str
    size: int
    version: str  # S3 ETag, or local mtime in ns: a changed object has a new version
    skip: str = ""  # why it is listed but never read (a FIFO, a device, a link not followed)


# A DICOMweb instance is its SOP Instance UID: a changed image is a new instance (dicomweb.py).
DICOMWEB_VERSION = "sop-instance-uid"


def is_hidden(name: str) -> bool:
    return name.startswith(".")


@functools.lru_cache(maxsize=4)
def _s3_client(endpoint: str | None, region: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name=region,
                        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5,
                                      read_timeout=60))  # one attempt: storage.with_retry is the retry loop


def _s3(prefix: str) -> tuple:
    """(client, bucket, key prefix) for an s3:// URI."""
    storage.resolve(prefix)  # validates the URI
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    bucket, _, key = prefix[len("s3://"):].partition("/")
    return _s3_client(storage.s3_endpoint(), region), bucket, key


def _s3_pages(prefix: str, delimiter: str | None) -> Iterator[dict]:
    client, bucket, key = _s3(prefix)
    kwargs = {"Bucket": bucket, "Prefix": key}
    if delimiter:
        kwargs["Delimiter"] = delimiter
    token = None
    while True:
        args = {**kwargs, **({"ContinuationToken": token} if token else {})}
        page = storage.with_retry(lambda args=args: client.list_objects_v2(**args), prefix, "list")
        yield page
        if not page.get("IsTruncated"):
            return
        token = page["NextContinuationToken"]


def _s3_entry(bucket: str, item: dict) -> ObjectEntry | None:
    key = item["Key"]
    if key.endswith("/") or any(is_hidden(part) for part in key.split("/")):
        return None
    return ObjectEntry(f"s3://{bucket}/{key}", int(item["Size"]), str(item.get("ETag", "")).strip('"'))


def _local_entry(path: str, st: os.stat_result) -> ObjectEntry:
    return ObjectEntry(storage.local_uri(path), int(st.st_size), str(st.st_mtime_ns))


@dataclass(frozen=True)
class Level:
    """One level below a prefix, as a fan-out sees it (objects are counted, never held)."""

    dirs: tuple[str, ...]  # sub-prefixes, each ending in "/", sorted
    has_objects: bool  # objects sit directly below the prefix
    complete: bool  # False: the level is larger than one listing page; it was not read to the end
    is_object: bool = False  # the prefix names one object


def list_level(prefix: str, follow_symlinks: bool = False, max_objects: int = 1000,
               roots: tuple[str, ...] = ()) -> Level:
    """The sub-prefixes of `prefix` and whether objects sit directly in it. A level holding more
    than `max_objects` objects (a flat folder) is not read to the end: `complete` is False and the
    caller lists it as one unit instead of expanding it. Sub-prefixes are all read, however many.
    A DICOMweb service's levels are its studies and their series; a series holds the objects."""
    if dicomweb.is_dicomweb(prefix):
        ref = dicomweb.parse(prefix)
        if ref.instance:
            return Level((), True, True, is_object=True)
        if ref.series:
            return Level((), True, True)
        return Level(tuple(c.uri for c in dicomweb.children(ref)), False, True)
    if storage.is_s3(prefix):
        client, bucket, key = _s3(prefix)
        if key and not key.endswith("/"):
            if _s3_single(prefix) is not None:
                return Level((), True, True, is_object=True)
            key += "/"
        dirs, n_objects = [], 0
        for page in _s3_pages(f"s3://{bucket}/{key}", "/"):
            n_objects += sum(1 for i in page.get("Contents", []) if _s3_entry(bucket, i))
            dirs += [f"s3://{bucket}/{p['Prefix']}" for p in page.get("CommonPrefixes", [])
                     if not is_hidden(p["Prefix"].rstrip("/").rsplit("/", 1)[-1])]
            if n_objects > max_objects and page.get("IsTruncated"):
                return Level((), True, False)
        return Level(tuple(sorted(dirs)), n_objects > 0, True)
    path = storage.resolve(prefix)[1]
    if os.path.isfile(path):
        return Level((), True, True, is_object=True)
    if not os.path.isdir(path):
        raise NotFoundError(f"{prefix}: no such object or prefix", uri=prefix)
    dirs, n_objects = [], 0
    try:
        with os.scandir(path) as it:
            for e in it:
                if is_hidden(e.name):
                    continue
                if _is_dir(e, follow_symlinks):
                    if not (e.is_symlink() and _inside(os.path.realpath(e.path), roots)):
                        dirs.append(storage.local_uri(e.path) + "/")
                elif _is_file(e) or _special(e, follow_symlinks):
                    n_objects += 1
                    if n_objects > max_objects:
                        return Level((), True, False)
    except PermissionError as exc:
        raise StorageError(f"{path}: cannot list the folder (permission denied)", uri=path) from exc
    return Level(tuple(sorted(dirs)), n_objects > 0, True)


def _s3_single(uri: str) -> ObjectEntry | None:
    client, bucket, key = _s3(uri)

    def head():
        try:
            return client.head_object(Bucket=bucket, Key=key)
        except client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    meta = storage.with_retry(head, uri, "stat")
    if meta is None:
        return None
    return ObjectEntry(uri, int(meta["ContentLength"]), str(meta.get("ETag", "")).strip('"'))


def iter_objects(prefix: str, recursive: bool = True, follow_symlinks: bool = False,
                 roots: tuple[str, ...] = ()) -> Iterator[ObjectEntry]:
    """Every object below `prefix` (or directly below it), streamed in listing order. `roots`: the
    real paths of every input of the listing; a linked folder inside one of them is listed there
    already, so it is not followed."""
    if dicomweb.is_dicomweb(prefix):
        ref = dicomweb.parse(prefix)
        if recursive or ref.series:
            for inst in dicomweb.iter_instances(ref):
                yield ObjectEntry(inst.uri, 0, DICOMWEB_VERSION)
        return
    if storage.is_s3(prefix):
        client, bucket, key = _s3(prefix)
        if key and not key.endswith("/"):
            single = _s3_single(prefix)
            if single is not None:
                yield single
                return
            key += "/"
        for page in _s3_pages(f"s3://{bucket}/{key}", None if recursive else "/"):
            for item in page.get("Contents", []):
                entry = _s3_entry(bucket, item)
                if entry is not None:
                    yield entry
        return
    path = storage.resolve(prefix)[1]
    if os.path.isfile(path):
        yield _local_entry(path, os.stat(path))
        return
    if not os.path.isdir(path):
        raise NotFoundError(f"{prefix}: no such object or prefix", uri=prefix)
    # Real paths of the folders walked: with links followed, none is walked twice.
    seen = {os.path.realpath(path)}
    stack = [(path, os.path.realpath(path))]
    while stack:
        folder, real_folder = stack.pop()
        subdirs = []
        for entry in _scandir(folder):
            if is_hidden(entry.name):
                continue
            if not entry.is_symlink():  # the common case, from one lstat (the rules below give the same)
                found = _plain(entry)
                if isinstance(found, ObjectEntry):
                    yield found
                elif found is _FOLDER and recursive:
                    real = os.path.join(real_folder, entry.name)
                    if real not in seen:
                        seen.add(real)
                        subdirs.append((entry.path, real))
                continue
            if _is_dir(entry, follow_symlinks):
                if not recursive:
                    continue
                real = os.path.join(real_folder, entry.name)
                if entry.is_symlink():
                    real = os.path.realpath(entry.path)
                    if _inside(real, roots):
                        continue  # a loop, or a folder the listing reaches anyway
                if real in seen:
                    continue
                seen.add(real)
                subdirs.append((entry.path, real))
            elif why := _special(entry, follow_symlinks):
                yield ObjectEntry(storage.local_uri(entry.path), 0, "special", skip=why)
            elif _is_file(entry):
                if entry.is_symlink() and _inside(os.path.realpath(entry.path), roots):
                    continue  # a link to a file the listing reaches anyway
                try:
                    yield _local_entry(entry.path, entry.stat())
                except FileNotFoundError:
                    yield ObjectEntry(storage.local_uri(entry.path), 0, "dangling")  # reading it names the problem
        stack.extend(sorted(subdirs, reverse=True))


_FOLDER = object()


def _plain(entry: os.DirEntry) -> ObjectEntry | object | None:
    """An entry that is no symlink, from its one lstat: a file (its ObjectEntry), a FIFO, socket or
    device (listed, never read), a folder (_FOLDER), or None (gone since the folder was read, or
    of another type)."""
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return None
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return ObjectEntry(storage.local_uri(entry.path), int(st.st_size), str(st.st_mtime_ns))
    if stat.S_ISDIR(mode):
        return _FOLDER
    for test, what in _SPECIAL:
        if test(mode):
            return ObjectEntry(storage.local_uri(entry.path), 0, "special", skip=f"{what}: not read")
    return None


def real_roots(prefixes: list[str]) -> tuple[str, ...]:
    """Real paths of the local inputs (what `roots` wants)."""
    return tuple(os.path.realpath(storage.resolve(p)[1]) for p in prefixes if not storage.is_remote(p))


def _inside(real: str, roots: tuple[str, ...]) -> bool:
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _scandir(path: str) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except PermissionError as exc:
        raise StorageError(f"{path}: cannot list the folder (permission denied)", uri=path) from exc
    except FileNotFoundError:
        return []  # removed while listing


def _is_dir(entry: os.DirEntry, follow_symlinks: bool) -> bool:
    try:
        if entry.is_symlink():
            return follow_symlinks and entry.is_dir(follow_symlinks=True)
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _special(entry: os.DirEntry, follow_symlinks: bool) -> str:
    """Why an entry that is no folder is listed but never read ("" when it is read): FIFOs,
    sockets and devices (reading one would hang or never end), and file links unless
    --follow-symlinks (the same rule as for folder links)."""
    try:
        if entry.is_symlink():
            if entry.is_dir(follow_symlinks=True):
                return ""
            if not follow_symlinks:
                return "a symbolic link to a file: not read (--follow-symlinks reads it)"
            try:
                mode = os.stat(entry.path).st_mode
            except OSError:
                return ""  # dangling: reading it names the problem
        else:
            mode = entry.stat(follow_symlinks=False).st_mode
    except OSError:
        return ""
    for test, what in _SPECIAL:
        if test(mode):
            return f"{what}: not read"
    return ""


def _is_file(entry: os.DirEntry) -> bool:
    try:
        if entry.is_symlink():
            return not entry.is_dir(follow_symlinks=True)  # a file link, or a dangling one
        return stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode)
    except OSError:
        return False
