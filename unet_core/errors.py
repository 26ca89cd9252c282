"""Domain exceptions. Each message names the object (URI, series UID, case id) and the fix.

There are four kinds, each its own class and none a subclass of another (docs/reliability.md):

- `InputError`: the data is bad (one object, one volume, one case). Within a job it becomes that
  item's row and the job goes on.
- `StorageError`: the object store failed or refused, after the retries. For one object it is
  that item's row (`error_type` "storage"); for the job's own output or listing it stops the job
  with exit status 5.
- `ConfigError`: a usage or configuration error (a flag, a config file, a model bundle that
  does not fit, a cluster address); exit status 2.
- `InternalError`: a bug or a failure the job could not recover from; exit status 1. Per item, an
  unexpected exception becomes a row with `error_type` "internal".
"""
from __future__ import annotations


class UnetError(Exception):
    """Base class of every error this project raises on purpose."""


class _ItemError(UnetError):
    """Shared shape of the two kinds that can belong to one object: `.uri` names it and
    `.reason` is a short machine-readable code (the row's `error_type`)."""

    reason = "error"

    def __init__(self, message: str, uri: str | None = None):
        super().__init__(message)
        self.uri = uri


class ConfigError(UnetError, ValueError):
    """Usage or configuration: a value is wrong (unknown key, impossible size, bad window, an
    address that is not a cluster), or an input cannot be used as a whole."""


class InternalError(UnetError):
    """A bug, or a failure the job could not recover from."""

    reason = "internal"


class JobError(InternalError):
    """A distributed job failed as a whole (training crashed beyond its restarts)."""


class InputError(_ItemError):
    """An input object cannot be used."""

    reason = "bad_input"


class EmptyFileError(InputError):
    reason = "empty_file"


class NotDicomError(InputError):
    reason = "not_dicom"


class UnreadableFileError(InputError):
    """Not a format this project reads (junk, an unknown image type)."""

    reason = "unreadable"


class TruncatedFileError(InputError):
    reason = "truncated"


class NoPixelDataError(InputError):
    reason = "no_pixel_data"


class NonImageObjectError(InputError):
    reason = "non_image_object"


class UnsupportedPixelDataError(InputError):
    reason = "unsupported_pixel_data"


class SeriesGeometryError(InputError):
    """Missing slices, duplicate positions, mixed sizes, gantry tilt, too few slices."""

    reason = "series_geometry"


class AmbiguousSourceError(InputError):
    """A prefix holds several series where one was expected."""

    reason = "ambiguous_source"


class InvalidVolumeError(InputError):
    """NaN/inf voxels, wrong dimensionality, mismatched grids."""

    reason = "invalid_volume"


class ResourceLimitError(InputError):
    """An object would exceed a configured memory or decompression budget."""

    reason = "resource_limit"


class StorageError(_ItemError):
    """An object store refused or failed (missing object, forbidden, endpoint down), after retries."""

    reason = "storage"


class PairingError(InputError):
    """Images and masks that should pair by case id do not."""

    reason = "pairing"


# The failures that belong to one item (an object, a volume, a case) and become its row.
ITEM_ERRORS: tuple[type[_ItemError], ...] = (InputError, StorageError)
