"""Domain exceptions. Each message names the object (URI, series UID, case id) and the fix."""
from __future__ import annotations


class UnetError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(UnetError, ValueError):
    """A configuration value is wrong (unknown key, impossible size, bad window)."""


class JobError(UnetError):
    """A distributed job failed as a whole (training crashed beyond its retries, ...)."""


class InputError(UnetError):
    """An input object cannot be used. `.uri` names it; `.reason` is a short machine-readable code."""

    reason = "bad_input"

    def __init__(self, message: str, uri: str | None = None):
        super().__init__(message)
        self.uri = uri


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


class StorageError(InputError):
    """An object store refused or failed (missing object, forbidden, endpoint down)."""

    reason = "storage"


class PairingError(InputError):
    """Images and masks that should pair by case id do not."""

    reason = "pairing"
