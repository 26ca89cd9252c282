"""Object storage: `s3://bucket/key`, `file://path` and plain local paths, as pyarrow filesystems.

A local file whose name is not UTF-8 (old Samba and NFS exports in Latin-1) or holds control
characters is named by a `file://` URI with those bytes percent-encoded (RFC 8089, `local_uri`):
text that Parquet, JSON and a terminal take as it is, and that reads back to the same bytes.

S3 settings come from the standard AWS variables and the default credential chain (environment,
shared config, instance / pod roles). `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` points at MinIO,
Ceph or another on-premise store. Credentials are never logged or put in error messages.

Writes never expose a half-written object: callers hand complete bytes to `write_bytes`; locally
they go to a temporary file in the same folder and are renamed over the target; on S3 a single
PUT (or a multipart upload) is only visible once complete. Transient errors (connection refused,
throttling, 5xx) are retried with exponential backoff; missing and forbidden objects are not.
Whether an error is transient, "not found" or "access denied" is decided here, once, for every
store and the DICOMweb client (`diagnose`): from the libraries' own codes (botocore's error code
and HTTP status, the error name and HTTP status pyarrow's S3 layer reports, errno, requests'
status), never from words in a message that also quotes the object's key. Each call is at most
our attempts: pyarrow's and botocore's own retries are off under ours.
"""
from __future__ import annotations

import contextlib
import enum
import errno
import functools
import io
import os
import random
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Callable, TypeVar
from urllib.parse import quote, unquote_to_bytes, urlparse

import pyarrow.fs as pafs

from unet_core.errors import ITEM_ERRORS, ConfigError, NotFoundError, ResourceLimitError, StorageError

T = TypeVar("T")

RETRY_ATTEMPTS = int(os.environ.get("UNET_STORAGE_RETRIES", "6"))  # a job's workers: from its settings (process_settings)
RETRY_BASE_SECONDS = 0.25


@dataclass(frozen=True)
class FileEntry:
    uri: str
    size: int


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def is_remote(uri: str) -> bool:
    """An object store or a DICOMweb service (unet_core.io.dicomweb): not a local path."""
    return uri.startswith(("s3://", "dicomweb+http://", "dicomweb+https://"))


# The lone surrogates that stand for bytes that are not UTF-8 in a name the filesystem gave.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")


def local_uri(path: str) -> str:
    """How a job names a local file: its path; or, when the name holds bytes that are not UTF-8 or
    characters that do not print (controls, format and separator characters), `file://` and the
    path's bytes percent-encoded."""
    if path.isprintable():
        return path
    return "file://" + quote(os.fsencode(os.path.abspath(path)), safe="/")


def _local_path(uri: str) -> str:
    """The path of a local URI: for `file://` the percent-decoded bytes (as Python holds a name the
    filesystem gives: bytes that are not UTF-8 as lone surrogates)."""
    if uri.startswith("file://"):
        rest = uri[len("file://"):]
        if rest.startswith("localhost/"):
            rest = rest[len("localhost"):]
        if not rest.startswith("/"):
            raise ConfigError(f"{uri!r} is not a valid file:// URI (expected file:///absolute/path)")
        return os.fsdecode(unquote_to_bytes(rest))
    return os.path.abspath(os.path.expanduser(uri))


def _native(path: str) -> str | bytes:
    """A local path as pyarrow can open it: bytes when the name is not UTF-8."""
    return os.fsencode(path) if _NOT_UTF8.search(path) else path


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@functools.lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str) -> pafs.S3FileSystem:
    kwargs: dict = {
        "region": region,
        # One attempt per call: `with_retry` is the one retry loop (pyarrow's own would multiply it).
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=1),
        # A small object is one PUT on close, not a multipart upload of three requests: fewer
        # requests to fail per attempt, and none left open when an attempt fails.
        "allow_delayed_open": True,
        "connect_timeout": 5.0,
        "request_timeout": 60.0,
    }
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a URI or local path."""
    if is_s3(uri):
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        path = uri[len("s3://"):].rstrip("/")
        if not path or path.startswith("/"):
            raise ConfigError(f"{uri!r} is not a valid s3:// URI (expected s3://bucket/key)")
        return _s3_filesystem(s3_endpoint(), region), path
    if uri.startswith(("dicomweb+http://", "dicomweb+https://")):
        raise ConfigError(f"{uri}: a DICOMweb service is an input to read, not a place to write")
    if "://" in uri and not uri.startswith("file://"):
        raise ConfigError(f"unsupported URI scheme in {uri!r}; use s3://, file://, dicomweb+https:// or a path")
    return pafs.LocalFileSystem(), _local_path(uri)


def join(base: str, *parts: str) -> str:
    """Join URI parts with '/', keeping the scheme."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


class Failure(enum.Enum):
    """What a library's exception means for a caller."""

    NOT_FOUND = "not found"  # the object, bucket or resource does not exist: the only "absent"
    DENIED = "access denied"  # credentials or policy: not retried
    TRANSIENT = "transient"  # throttling, 5xx, a refused or dropped connection, a timeout: retried
    OTHER = "other"  # anything else (an HTTP 400, a bad request, a full disk): not retried


@dataclass(frozen=True)
class Diagnosis:
    failure: Failure
    code: str = ""  # the library's own name for it (an S3 error code, an errno name)
    status: int | None = None  # the HTTP status, where there was one


NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404", "NO_SUCH_KEY", "NO_SUCH_BUCKET",
                             "RESOURCE_NOT_FOUND"})
DENIED_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                          "InvalidToken", "AllAccessDisabled", "AccountProblem", "ACCESS_DENIED",
                          "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "EXPIRED_TOKEN",
                          "INVALID_CLIENT_TOKEN_ID", "MISSING_AUTHENTICATION_TOKEN", "UNRECOGNIZED_CLIENT"})
TRANSIENT_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                             "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequests", "SLOW_DOWN",
                             "THROTTLING", "SERVICE_UNAVAILABLE", "INTERNAL_FAILURE", "NETWORK_CONNECTION",
                             "REQUEST_TIMEOUT"})
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT_ERRNO = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT,
                             errno.EPIPE, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EAGAIN})
# pyarrow's S3 layer reports the AWS SDK's error name and the HTTP status in a fixed form
# ("AWS Error SLOW_DOWN during PutObject operation", "AWS Error UNKNOWN (HTTP status 503) during
# HeadObject operation"): its only structured part. The key and bucket it also quotes are removed
# before this is looked for, so no object name can pose as a code.
_ARROW_AWS = re.compile(r"AWS Error (?P<code>[A-Z_]+|\[code \d+\])(?: \(HTTP status (?P<status>\d{3})\))? during \w+ "
                        r"operation")


def _by_code(code: str, status: int | None) -> Failure:
    if code in NOT_FOUND_CODES or status == 404:
        return Failure.NOT_FOUND
    if code in DENIED_CODES or status in (401, 403):
        return Failure.DENIED
    if code in TRANSIENT_CODES or status in TRANSIENT_STATUS:
        return Failure.TRANSIENT
    return Failure.OTHER


def _module_type(module: str, name: str) -> type | None:
    """A library's exception class, if that library is loaded (nothing is imported for this)."""
    return getattr(sys.modules.get(module), name, None)


def diagnose(exc: BaseException, uri: str = "") -> Diagnosis:
    """What `exc` means (see the module docstring); `uri` names the object it was about (its
    key and bucket are never read as a code)."""
    client_error = _module_type("botocore.exceptions", "ClientError")
    if client_error is not None and isinstance(exc, client_error):
        error, meta = exc.response.get("Error", {}), exc.response.get("ResponseMetadata", {})
        code, status = str(error.get("Code", "")), meta.get("HTTPStatusCode")
        return Diagnosis(_by_code(code, status), code, status)
    for module, name in (("requests.exceptions", "SSLError"), ("botocore.exceptions", "SSLError")):
        kind = _module_type(module, name)
        if kind is not None and isinstance(exc, kind):  # a certificate does not fix itself
            return Diagnosis(Failure.OTHER, name)
    for module, names in (("botocore.exceptions", ("ConnectionError", "HTTPClientError")),
                          ("requests.exceptions", ("ConnectionError", "Timeout", "ChunkedEncodingError"))):
        kinds = tuple(t for t in (_module_type(module, n) for n in names) if t is not None)
        if kinds and isinstance(exc, kinds):
            return Diagnosis(Failure.TRANSIENT, type(exc).__name__)
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):  # requests' HTTPError (the DICOMweb client)
        return Diagnosis(_by_code("", status), "", status)
    if isinstance(exc, FileNotFoundError):
        return Diagnosis(Failure.NOT_FOUND, "ENOENT")
    if isinstance(exc, PermissionError):
        return Diagnosis(Failure.DENIED, errno.errorcode.get(exc.errno or 0, ""))
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return Diagnosis(Failure.TRANSIENT, type(exc).__name__)
    if isinstance(exc, OSError):
        if exc.errno in TRANSIENT_ERRNO:
            return Diagnosis(Failure.TRANSIENT, errno.errorcode[exc.errno])
        text = str(exc)
        if uri.startswith("s3://"):
            bucket, _, key = uri[len("s3://"):].partition("/")
            for name in sorted({key.rstrip("/"), bucket} - {""}, key=len, reverse=True):
                text = text.replace(name, "")
        m = _ARROW_AWS.search(text)
        if m:
            status = int(m["status"]) if m["status"] else None
            return Diagnosis(_by_code(m["code"], status), m["code"], status)
    return Diagnosis(Failure.OTHER, type(exc).__name__)


def _classify(exc: BaseException, uri: str, action: str) -> BaseException:
    if isinstance(exc, ITEM_ERRORS):
        return exc
    found = diagnose(exc, uri)
    if found.failure is Failure.NOT_FOUND:
        what = "bucket" if found.code in ("NoSuchBucket", "NO_SUCH_BUCKET") else "object"
        return NotFoundError(f"{uri}: {what} not found ({action})", uri=uri)
    if found.failure is Failure.DENIED:
        return StorageError(
            f"{uri}: access denied ({action}); check the credentials (AWS_ACCESS_KEY_ID / role) and "
            "the bucket policy", uri=uri,
        )
    if found.failure is Failure.TRANSIENT:
        return StorageError(f"{uri}: {action} failed after retries: the store is unreachable or overloaded "
                            f"({found.code if found.code not in ('', 'UNKNOWN') else f'HTTP {found.status}'})", uri=uri)
    return StorageError(f"{uri}: {action} failed: {exc}", uri=uri)


def with_retry(fn: Callable[[], T], uri: str, action: str, attempts: int | None = None, *,
               classify: Callable[[BaseException, str, str], BaseException] | None = None,
               base_seconds: float = RETRY_BASE_SECONDS,
               wait: Callable[[BaseException], float | None] | None = None) -> T:
    """Run `fn`, retrying what `diagnose` calls transient with jittered exponential backoff (or as
    long as `wait` says for an error, e.g. a server's Retry-After). `classify` words the final
    error (the DICOMweb client passes its own); which errors are retried is decided here only."""
    attempts = attempts or RETRY_ATTEMPTS
    classify = classify or _classify
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # classified below
            if isinstance(exc, ITEM_ERRORS):  # already ours (a budget, a refusal): never retried
                raise
            if attempt + 1 < attempts and diagnose(exc, uri).failure is Failure.TRANSIENT:
                told = wait(exc) if wait is not None else None
                time.sleep(told if told is not None else base_seconds * 2**attempt * (0.5 + random.random()))
                continue
            raise classify(exc, uri, action) from exc
    raise AssertionError("unreachable")


def _for_reading(uri: str) -> tuple[pafs.FileSystem, str | bytes]:
    fs, path = resolve(uri)
    return (fs, _native(path)) if isinstance(fs, pafs.LocalFileSystem) else (fs, path)


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """The whole object. With `max_bytes`, an object larger than that is refused unread."""
    fs, path = _for_reading(uri)

    def _read() -> bytes:
        with fs.open_input_file(path) as f:
            size = f.size()
            if max_bytes is not None and size > max_bytes:
                raise ResourceLimitError(
                    f"{uri}: {size} bytes exceeds the per-file limit of {max_bytes} bytes "
                    "(raise --max-file-bytes to allow it)", uri=uri,
                )
            return f.read()

    return with_retry(_read, uri, "read")


def read_range(uri: str, start: int, length: int) -> bytes:
    """`length` bytes from `start` (fewer at the end of the object): a header without the pixels."""
    fs, path = _for_reading(uri)

    def _read() -> bytes:
        with fs.open_input_file(path) as f:
            return f.read_at(min(length, max(f.size() - start, 0)), start)

    return with_retry(_read, uri, "read")


def absolute(uri: str) -> str:
    """A URI as a job names it everywhere: local paths absolute (the same place named two ways is
    one place), without a trailing "/"."""
    return uri.rstrip("/") if "://" in uri else os.path.abspath(uri)


def stat(uri: str) -> tuple[int, int]:
    """(size, modification time in ns; 0 where the store gives none) of one object."""
    fs, path = _for_reading(uri)
    info = with_retry(lambda: fs.get_file_info(path), uri, "stat")
    if info.type != pafs.FileType.File:
        raise NotFoundError(f"{uri}: no such object", uri=uri)
    return int(info.size), int(info.mtime_ns or 0)


def size_of(uri: str) -> int:
    return stat(uri)[0]


RANGE_BYTES = 8 * 2**20  # one ranged GET fetches this much of an object read at random (S3)


def open_random_access(uri: str):
    """A seekable file over an object: local, the file itself; S3, ranged GETs of RANGE_BYTES as
    it is read (a reader that seeks to a zip's central directory and then reads its members in
    order fetches the directory and then a few large ranges, never the whole object per member)."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        return with_retry(lambda: open(path, "rb"), uri, "open")  # closed by the caller
    return io.BufferedReader(with_retry(lambda: fs.open_input_file(path), uri, "open"), buffer_size=RANGE_BYTES)


# The process's umask, read once at import (reading it means setting it, which is not thread-safe).
_UMASK = os.umask(0o022)
os.umask(_UMASK)
PRIVATE_OUTPUTS_ENV = "UNET_PRIVATE_OUTPUTS"  # "1": outputs readable by their owner only (--private-outputs)
# Set from a job's own settings in each of its processes (process_settings.StorageSettings.apply);
# None: the variable above decides (a process no job's settings reached).
PRIVATE_OUTPUTS: bool | None = None


def private_outputs() -> bool:
    return PRIVATE_OUTPUTS if PRIVATE_OUTPUTS is not None else os.environ.get(PRIVATE_OUTPUTS_ENV) == "1"


def output_mode() -> int:
    """The mode of a written local file: as the umask allows (0644 under the usual 022), or 0600
    with --private-outputs. The temporary file is 0600 until it is complete."""
    return 0o600 if private_outputs() else 0o666 & ~_UMASK


def write_bytes(uri: str, data: bytes) -> None:
    """Publish `data` at `uri` atomically (see the module docstring)."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        folder = os.path.dirname(path)
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        except OSError as exc:  # a file where a folder should be, no permission, disk full, ...
            raise _classify(exc, uri, "write") from exc
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), output_mode())
            os.replace(tmp, path)
        except BaseException as exc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise _classify(exc, uri, "write") from exc
            raise
        return

    def _write() -> None:
        # compression=None: pyarrow would otherwise gzip anything named *.gz a second time.
        with fs.open_output_stream(path, compression=None) as f:
            f.write(data)

    with_retry(_write, uri, "write")


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    info = with_retry(lambda: fs.get_file_info(path), uri, "stat")
    return info.type == pafs.FileType.File


def delete(uri: str) -> None:
    """Remove one object; one that is not there is already removed. Any other failure raises."""
    fs, path = resolve(uri)
    try:
        with_retry(lambda: fs.delete_file(path), uri, "delete")
    except NotFoundError:
        pass


def list_files(prefix: str) -> list[FileEntry]:
    """Every object below `prefix` (recursive), sorted by URI; a single object lists itself.
    Hidden temporaries (`.tmp-*`) are skipped."""
    fs, path = resolve(prefix)
    info = with_retry(lambda: fs.get_file_info(path), prefix, "stat")
    scheme = "s3://" if is_s3(prefix) else ""
    if info.type == pafs.FileType.File:
        return [FileEntry(prefix, info.size)]
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    infos = with_retry(lambda: fs.get_file_info(selector), prefix, "list")
    entries = [
        FileEntry(scheme + i.path, i.size)
        for i in infos
        if i.type == pafs.FileType.File and not i.base_name.startswith(".tmp-")
    ]
    if not entries and info.type == pafs.FileType.NotFound:
        raise NotFoundError(f"{prefix}: no such object or prefix", uri=prefix)
    return sorted(entries, key=lambda e: e.uri)


def probe_writable(prefix: str) -> None:
    """Write a small hidden object under `prefix` and remove it, before a job reads anything: a
    store that refuses the output fails the job at once, naming the key and what to check, instead
    of after the archive was scanned. Raises StorageError."""

    key = join(prefix, f".tmp-probe-{uuid.uuid4().hex[:12]}")
    try:
        write_bytes(key, b"unet-ray write probe")
    except StorageError as exc:
        raise StorageError(
            f"{prefix}: the output cannot be written: a probe object {key} was refused ({exc}). Check that the "
            "prefix is right, the bucket exists, and the credentials may put and delete objects under it "
            "(s3:PutObject, s3:DeleteObject), or that the local folder is writable", uri=key) from exc
    delete(key)


def sweep_temporaries(prefix: str) -> int:
    """Remove `.tmp-*` files that a killed writer left below a local prefix (object stores never
    show an unfinished upload, so there is nothing to sweep there). Returns how many went."""
    fs, path = resolve(prefix)
    if not isinstance(fs, pafs.LocalFileSystem) or not os.path.isdir(path):
        return 0
    swept = 0
    for folder, _, names in os.walk(path):
        for name in names:
            if name.startswith(".tmp-"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
                    swept += 1
    return swept


def delete_tree(uri: str) -> None:
    """Remove every object below a prefix (and the local folder)."""
    fs, path = resolve(uri)
    info = with_retry(lambda: fs.get_file_info(path), uri, "stat")
    if info.type == pafs.FileType.NotFound:
        return
    if info.type == pafs.FileType.File:
        with_retry(lambda: fs.delete_file(path), uri, "delete")
        return
    with_retry(lambda: fs.delete_dir_contents(path, missing_dir_ok=True), uri, "delete")
    if isinstance(fs, pafs.LocalFileSystem):
        with_retry(lambda: fs.delete_dir(path), uri, "delete")
