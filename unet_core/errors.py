"""Domain exceptions. Each message names the object (URI, series UID, case id) and the fix.

There are four kinds, each its own class and none a subclass of another (docs/reliability.md):

- `InputError`: the data is bad (one object, one volume, one case). Within a job it becomes that
  item's row and the job goes on.
- `StorageError`: the object store failed or refused, after the retries. For one object it is
  that item's row (`error_type` "storage"); for the job's own output or listing it stops the job
  with exit status 5. Its subclass `NotFoundError` is raised only when the store said the object
  (or bucket, or DICOMweb resource) does not exist: the one storage failure a caller may read as
  "absent". Access denied, throttling and an unreachable store stay plain `StorageError`.
- `ConfigError`: a usage or configuration error (a flag, a config file, a model bundle that
  does not fit, a cluster address); exit status 2.
- `InternalError`: a bug or a failure the job could not recover from; exit status 1. Per item, an
  unexpected exception becomes a row with `error_type` "internal".
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

_log = logging.getLogger("unet")


class ErrorType(enum.StrEnum):
    """Every value of a row's `error_type`: the one list (tables, records, reports and the
    summary's `failures_by_type` use these strings). NONE is a row without an error."""

    NONE = ""
    # input: the data of one object, volume or case
    BAD_INPUT = "bad_input"
    EMPTY_FILE = "empty_file"
    NOT_DICOM = "not_dicom"
    UNREADABLE = "unreadable"
    TRUNCATED = "truncated"
    NO_PIXEL_DATA = "no_pixel_data"
    NON_IMAGE_OBJECT = "non_image_object"
    UNSUPPORTED_PIXEL_DATA = "unsupported_pixel_data"
    INVALID_PIXEL_DATA = "invalid_pixel_data"  # a compressed frame that declares another size than its header
    SERIES_GEOMETRY = "series_geometry"
    AMBIGUOUS_SOURCE = "ambiguous_source"
    INVALID_VOLUME = "invalid_volume"
    RESOURCE_LIMIT = "resource_limit"
    UNSAFE_ARCHIVE_MEMBER = "unsafe_archive_member"
    CONFLICTING_INSTANCES = "conflicting_instances"  # two objects claim one SOP instance with other pixels
    # set aside on purpose (status skipped), not failures of the object
    DUPLICATE_INSTANCE = "duplicate_instance"
    LOCALIZER = "localizer"
    NOT_SELECTED = "not_selected"  # a volume the selection rules, --sample or --limit leave out
    NOT_READ = "not_read"  # a FIFO, socket or device, or a file link without --follow-symlinks
    # not the input's own
    STORAGE = "storage"  # the store failed or refused, after retries
    PREDICTION = "prediction"  # the model failed on this volume, or killed its process, every attempt
    INTERNAL = "internal"  # an unexpected exception: a bug, reported per item instead of stopping the job
    NOT_RECORDED = "not_recorded"  # the completion record could not be written; redone next run


class UnetError(Exception):
    """Base class of every error this project raises on purpose."""


class _ItemError(UnetError):
    """Shared shape of the two kinds that can belong to one object: `.uri` names it and
    `.reason` is a short machine-readable code (the row's `error_type`)."""

    reason: ErrorType = ErrorType.BAD_INPUT

    def __init__(self, message: str, uri: str | None = None):
        super().__init__(message)
        self.uri = uri


class ConfigError(UnetError, ValueError):
    """Usage or configuration: a value is wrong (unknown key, impossible size, bad window, an
    address that is not a cluster), or an input cannot be used as a whole."""


class InternalError(UnetError):
    """A bug, or a failure the job could not recover from."""

    reason = ErrorType.INTERNAL


class JobError(InternalError):
    """A distributed job failed as a whole (training crashed beyond its restarts)."""


class InputError(_ItemError):
    """An input object cannot be used."""

    reason = ErrorType.BAD_INPUT


class EmptyFileError(InputError):
    reason = ErrorType.EMPTY_FILE


class NotDicomError(InputError):
    reason = ErrorType.NOT_DICOM


class UnreadableFileError(InputError):
    """Not a format this project reads (junk, an unknown image type)."""

    reason = ErrorType.UNREADABLE


class TruncatedFileError(InputError):
    reason = ErrorType.TRUNCATED


class NoPixelDataError(InputError):
    reason = ErrorType.NO_PIXEL_DATA


class NonImageObjectError(InputError):
    reason = ErrorType.NON_IMAGE_OBJECT


class UnsupportedPixelDataError(InputError):
    reason = ErrorType.UNSUPPORTED_PIXEL_DATA


class InvalidPixelDataError(InputError):
    """A compressed frame's own header disagrees with the object's (size, samples, bits)."""

    reason = ErrorType.INVALID_PIXEL_DATA


class SeriesGeometryError(InputError):
    """Missing slices, duplicate positions, mixed sizes, gantry tilt, too few slices."""

    reason = ErrorType.SERIES_GEOMETRY


class AmbiguousSourceError(InputError):
    """A prefix holds several series where one was expected."""

    reason = ErrorType.AMBIGUOUS_SOURCE


class ConflictingInstancesError(InputError):
    """Two objects are one SOP instance with different pixel data."""

    reason = ErrorType.CONFLICTING_INSTANCES


class InvalidVolumeError(InputError):
    """NaN/inf voxels, wrong dimensionality, mismatched grids."""

    reason = ErrorType.INVALID_VOLUME


class ResourceLimitError(InputError):
    """An object would exceed a configured memory or decompression budget."""

    reason = ErrorType.RESOURCE_LIMIT


class StorageError(_ItemError):
    """An object store refused or failed (missing object, forbidden, endpoint down), after retries."""

    reason = ErrorType.STORAGE


class NotFoundError(StorageError):
    """The store answered that the object does not exist (S3 NoSuchKey / NoSuchBucket / 404, a
    missing local file, a DICOMweb 404). Nothing else: a refusal or an outage is a StorageError."""


class OutgoingObjectError(InputError):
    """A file about to be delivered is not the object its volume's row says it is (another SOP
    Class, another SOP Instance UID, another study or source series, or outside the output's own
    seg/ and rtstruct/ folders)."""


# The failures that belong to one item (an object, a volume, a case) and become its row.
ITEM_ERRORS: tuple[type[_ItemError], ...] = (InputError, StorageError)


def library_error(exc: BaseException) -> str:
    """How a message names a third-party library's exception: by its type only. Its text can quote
    the data it choked on (a header value); that goes to the debug log (-v) alone."""
    _log.debug("library error: %s: %s", type(exc).__name__, exc)
    return f"{type(exc).__name__} in {type(exc).__module__.split('.')[0]}"


@dataclass(frozen=True)
class ItemFailure:
    """How any failure of one item (object, volume, case) is reported: the `error` and
    `error_type` columns of its row, in every job's tables. An input or storage error keeps its own
    message (which names the object); any other exception is a bug, reported as `internal` with
    its type only: its text may quote data (a header value), so it goes to the debug log (-v)."""

    error: str
    error_type: ErrorType

    @classmethod
    def of(cls, name: str, exc: BaseException, doing: str = "") -> ItemFailure:
        if isinstance(exc, ITEM_ERRORS):
            return cls(str(exc), exc.reason)
        _log.debug("%s: %s: internal error", name, doing or "processing", exc_info=exc)
        what = f"{doing} failed" if doing else "failed"
        return cls(f"{name}: {what}: internal error ({type(exc).__name__}; -v shows the traceback)",
                   ErrorType.INTERNAL)
