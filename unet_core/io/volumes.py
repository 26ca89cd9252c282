"""Volume I/O: `read_volume(source)` for NIfTI, DICOM series and bytes, local or `s3://`;
`read_object(s)` for the bytes of stored objects, zip members and DICOMweb instances.

Orientation is settled in this package (see `orientation.py`) and nowhere else.
"""
from __future__ import annotations

from typing import Sequence

from unet_core.config import Limits
from unet_core.errors import EmptyFileError, StorageError
from unet_core.io import archive, dicomweb, storage
from unet_core.io.dicom.grouping import single_series
from unet_core.io.dicom.header import scan_header
from unet_core.io.dicom.pixels import same_pixels
from unet_core.io.dicom.series import read_series
from unet_core.io.nifti import is_nifti_name, mask_to_nifti_bytes, read_nifti
from unet_core.volume import Volume

__all__ = ["Volume", "mask_to_nifti_bytes", "read_object", "read_volume"]


def read_object(uri: str, limits: Limits | None = None) -> bytes:
    """Bytes of a stored object or of a zip member (`archive.zip!/path`)."""
    limits = limits or Limits()
    if dicomweb.is_dicomweb(uri):
        return dicomweb.read_instance(uri, limits.max_file_bytes)
    container, member = archive.split_member(uri)
    if member is None:
        return storage.read_bytes(container, max_bytes=limits.max_file_bytes)
    return archive.Archive.shared(container, limits).read(member)


def read_objects(uris: Sequence[str], limits: Limits | None = None) -> list[bytes]:
    """The bytes of several objects, in order: each zip archive among their containers is opened
    once and all its members needed here are read through it (a series exported as 300 members of
    one zip costs one central directory read and 300 member reads, not 300 archive downloads); the
    instances of a DICOMweb series come in one WADO-RS request."""
    limits = limits or Limits()
    by_archive: dict[str, list[str]] = {}
    for uri in uris:
        container, member = archive.split_member(uri)
        if member is not None:
            by_archive.setdefault(container, []).append(uri)
    out: dict[str, bytes] = {}
    by_series: dict[str, list[str]] = {}
    for uri in uris:
        if dicomweb.is_dicomweb(uri):
            by_series.setdefault(uri.rsplit("/instances/", 1)[0], []).append(uri)
    for members in by_series.values():
        if len(members) > 1:  # one request for the series; an instance missing from it is asked alone
            out.update(dicomweb.read_series(members, limits.max_file_bytes))
    for container, members in by_archive.items():
        zipped = archive.Archive.shared(container, limits)  # kept open for this process's next volume
        for uri in sorted(members, key=lambda u: zipped.offset(archive.split_member(u)[1])):  # in stored order
            out[uri] = zipped.read(archive.split_member(uri)[1])
    return [out[u] if u in out else read_object(u, limits) for u in uris]


def _looks_like_nifti(data: bytes) -> bool:
    if data[:2] == b"\x1f\x8b":
        return True
    return len(data) >= 348 and data[344:347] in (b"n+1", b"ni1", b"n+2")


def read_volume(
    source: str | bytes | Sequence[str], limits: Limits | None = None, keep_phi: bool = False
) -> Volume:
    """One Volume from a NIfTI file, a DICOM series (list of files, or a prefix holding exactly
    one series), a single multi-frame DICOM object, or in-memory bytes of either format."""
    limits = limits or Limits()
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise EmptyFileError("<bytes>: empty input (0 bytes)")
        if _looks_like_nifti(data):
            return read_nifti(data, "<bytes>", limits)
        return _read_dicom({"<bytes>": data}, "<bytes>", limits, keep_phi)
    if isinstance(source, str):
        if is_nifti_name(source):
            return read_nifti(read_object(source, limits), source, limits)
        uris = [e.uri for e in storage.list_files(source)]
        name = source
    else:
        uris, name = list(source), f"{len(source)} DICOM files"
    if not uris:
        raise StorageError(f"{name}: no files", uri=str(name))
    blobs = {}
    for uri in uris:
        blobs[uri] = read_object(uri, limits)
    return _read_dicom(blobs, name, limits, keep_phi)


def _read_dicom(blobs: dict[str, bytes], name: str, limits: Limits, keep_phi: bool) -> Volume:
    # Complete bytes always give a header (None only comes back for a prefix).
    headers = [scan_header(data, uri, max_inflated=limits.max_decompressed_bytes) for uri, data in blobs.items()]
    group = single_series(headers, name, same=lambda a, b: same_pixels(blobs[a.uri], blobs[b.uri], a.uri, b.uri))
    return read_series(group, [blobs[u] for u in group.uris], limits, keep_phi)
