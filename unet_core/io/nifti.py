"""NIfTI-1/2 (nibabel) from bytes, and the mask writer.

Gzip is expanded in steps with a hard limit, and the header's declared size is checked against
the per-volume budget before any voxel is read, so a small `.nii.gz` cannot expand into all memory.
"""
from __future__ import annotations

import gzip
import io
import zlib

import nibabel as nib
import numpy as np

from unet_core.config import Limits
from unet_core.errors import (
    EmptyFileError,
    InvalidVolumeError,
    ResourceLimitError,
    TruncatedFileError,
    library_error,
)
from unet_core.volume import Volume, affine_problem, short_hash

NIFTI_SUFFIXES = (".nii", ".nii.gz")


# NIfTI xform codes and what they mean (Volume.space)
CODE_SPACES = {0: "unknown", 1: "scanner", 2: "aligned", 3: "talairach", 4: "mni", 5: "template"}
SPACE_CODES = {v: k for k, v in CODE_SPACES.items()}


def is_nifti_name(uri: str) -> bool:
    return uri.lower().endswith(NIFTI_SUFFIXES)


def nifti_volume_id(uri: str) -> str:
    """Stable id of a NIfTI source: a hash of its full URI. Never the file's name, which archives
    often make of a patient's name or record number; the `source` column links back to it."""
    return f"nii-{short_hash(uri)}"


GUNZIP_STEP = 1 << 20  # most one inflate call produces: a header peek inflates one step, not the budget
_GZ_INPUT_STEP = 64 * 1024  # compressed bytes fed per call (zlib copies what it leaves unconsumed)


def gunzip_limited(data: bytes, limit: int, uri: str, stop_after: int | None = None) -> bytes:
    """Expand gzip `data`; more than `limit` bytes raises ResourceLimitError. With `stop_after`,
    return once that many bytes are out (a header peek: one inflate step, whatever the budget).
    Inflated in steps of GUNZIP_STEP into one growing buffer: a step of the whole budget once
    took the header peek of a gzip bomb to the budget (2 GiB at the default)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out, view, pos, tail = bytearray(), memoryview(data), 0, b""
    try:
        while not d.eof:
            if not tail and pos < len(data):
                tail = view[pos:pos + _GZ_INPUT_STEP]
                pos += len(tail)
            piece = d.decompress(tail, min(GUNZIP_STEP, limit + 1 - len(out)))
            tail = d.unconsumed_tail
            if not piece and not tail and pos >= len(data):
                break  # the input ended before the stream did
            out += piece
            if len(out) > limit:
                raise ResourceLimitError(
                    f"{uri}: gzip expands beyond the limit of {limit} bytes (raise --max-decompressed-bytes)", uri=uri
                )
            if stop_after is not None and len(out) >= stop_after:
                return bytes(out)
    except zlib.error as exc:
        raise TruncatedFileError(f"{uri}: corrupt gzip stream ({library_error(exc)})", uri=uri) from exc
    if not d.eof and stop_after is None:
        raise TruncatedFileError(f"{uri}: gzip stream ends early (file truncated)", uri=uri)
    return bytes(out)


def _header(raw: bytes, uri: str):
    if len(raw) < 348:
        raise TruncatedFileError(f"{uri}: {len(raw)} bytes is too short for a NIfTI header", uri=uri)
    size = int.from_bytes(raw[:4], "little")
    cls = nib.Nifti2Header if size == 540 or int.from_bytes(raw[:4], "big") == 540 else nib.Nifti1Header
    try:
        hdr = cls.from_fileobj(io.BytesIO(raw[: cls.sizeof_hdr]), check=True)
    except Exception as exc:  # nibabel raises HeaderDataError and friends
        raise InvalidVolumeError(f"{uri}: not a valid NIfTI header ({library_error(exc)})", uri=uri) from exc
    offset = float(hdr["vox_offset"])
    if not (np.isfinite(offset) and 0 <= offset < 2**40):
        raise InvalidVolumeError(f"{uri}: vox_offset {offset} is not a byte offset into the file", uri=uri)
    return hdr


NIFTI_HEADER_PREFIX = 64 * 1024  # stored bytes read for a header (a gzipped header is in the first block)


def nifti_geometry(prefix: bytes, uri: str, limits: Limits | None = None) -> dict | None:
    """What the selection rules can know of a NIfTI file from the first bytes of it: its grid
    (columns, rows, slices), in-plane spacing, slice spacing and direction cosines (of the
    best affine, as ImageOrientationPatient would give them). None when the header cannot be
    read here (decoding then names the problem)."""
    limits = limits or Limits()
    try:
        head = gunzip_limited(prefix, limits.max_decompressed_bytes, uri, stop_after=544) if prefix[:2] == b"\x1f\x8b" \
            else prefix
        hdr = _header(head, uri)
        dims = [int(x) for x in hdr["dim"][1:4]]
        affine = np.asarray(hdr.get_best_affine(), float)
    except Exception:  # noqa: BLE001 - unread here; read_nifti reports it with the volume
        return None
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if len(dims) < 3 or min(dims) < 1 or not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        return None
    cosines = np.concatenate([affine[:3, 0] / zooms[0], affine[:3, 1] / zooms[1]])
    return {"columns": dims[0], "rows": dims[1], "frames": dims[2], "pixel_spacing": (float(zooms[1]), float(zooms[0])),
            "slice_thickness": float(zooms[2]), "orientation": tuple(float(c) for c in cosines)}


def read_nifti(data: bytes, uri: str, limits: Limits | None = None, volume_id: str | None = None) -> Volume:
    """A NIfTI file's bytes -> Volume (3D, or 4D with a single volume)."""
    limits = limits or Limits()
    if not data:
        raise EmptyFileError(f"{uri}: empty file (0 bytes)", uri=uri)
    gz = data[:2] == b"\x1f\x8b"
    head = gunzip_limited(data, limits.max_decompressed_bytes, uri, stop_after=544) if gz else data
    hdr = _header(head, uri)
    dims = [int(x) for x in hdr["dim"][1 : int(hdr["dim"][0]) + 1]]
    if len(dims) == 4 and dims[3] == 1:
        dims = dims[:3]
    if len(dims) != 3:
        raise InvalidVolumeError(
            f"{uri}: a {len(dims)}D image of shape {tuple(dims)}; expected 3D (or 4D with one volume)", uri=uri
        )
    if min(dims) < 1:
        raise InvalidVolumeError(f"{uri}: shape {tuple(dims)} has an empty axis", uri=uri)
    need = int(np.prod(dims)) * 4
    if need > limits.max_volume_bytes:
        raise ResourceLimitError(
            f"{uri}: declared shape {tuple(dims)} needs {need} bytes, above the per-volume budget of "
            f"{limits.max_volume_bytes} (raise --max-volume-bytes)", uri=uri,
        )
    expected = int(hdr.get_data_offset()) + int(np.prod(dims)) * hdr.get_data_dtype().itemsize
    raw = gunzip_limited(data, min(limits.max_decompressed_bytes, expected + 1024), uri) if gz else data
    if len(raw) < expected:
        raise TruncatedFileError(f"{uri}: {len(raw)} bytes where the header declares {expected} (truncated)", uri=uri)
    cls = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    try:
        img = cls.from_bytes(raw)
        voxels = np.asarray(img.get_fdata(dtype=np.float32)).reshape(dims)
    except Exception as exc:
        raise InvalidVolumeError(f"{uri}: NIfTI data cannot be read ({library_error(exc)})", uri=uri) from exc
    bad = int(np.count_nonzero(~np.isfinite(voxels)))
    if bad:
        raise InvalidVolumeError(f"{uri}: {bad} voxels are NaN or infinite", uri=uri)
    problem = affine_problem(img.affine)
    if problem:
        raise InvalidVolumeError(f"{uri}: {problem} (the header's sform / qform)", uri=uri)
    sform_code, qform_code = int(img.header["sform_code"]), int(img.header["qform_code"])
    code = sform_code if sform_code > 0 else qform_code
    return Volume(
        voxels=np.ascontiguousarray(voxels), affine=np.asarray(img.affine, dtype=np.float64),
        volume_id=volume_id or nifti_volume_id(uri),
        modality=None,  # NIfTI does not say; `--assume-modality` sets it
        sources=(uri,), metadata={},
        space=CODE_SPACES.get(code, "aligned"),
    )


def mask_to_nifti_bytes(labels: np.ndarray, volume: Volume) -> bytes:
    """uint8 labels on the volume's exact grid, with its affine, as gzipped NIfTI-1 bytes."""
    if labels.shape != volume.shape:
        raise InvalidVolumeError(f"mask shape {labels.shape} differs from volume {volume.volume_id} shape {volume.shape}")
    img = nib.Nifti1Image(np.asarray(labels, dtype=np.uint8), volume.affine)
    code = SPACE_CODES.get(volume.space, 1)  # the mask's coordinates mean what the source's do
    img.set_sform(volume.affine, code=code)
    img.set_qform(volume.affine, code=code)
    img.header.set_data_dtype(np.uint8)
    img.header["descrip"] = b"unet-ray mask"
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0)
