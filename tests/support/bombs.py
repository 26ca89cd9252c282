"""Decompression and declared-size bombs, each small on disk and huge if decoded naively, built
as a stream (none of them is ever held expanded by the test itself).

    deflate_bomb_dicom(n)      deflated-syntax DICOM with a private OB element of n bytes of zeros
    j2k_declared_size_dicom()  a 64 x 64 DICOM whose JPEG 2000 frame declares 30000 x 30000
    zip_bomb(n)                a zip whose one member inflates to n bytes
    gzip_bomb_nifti(n)         a .nii.gz whose stream goes on with n bytes of zeros past the image
"""
from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib

import nibabel as nib
import numpy as np
import pydicom
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info

from unet_core.synthetic import Phantom, SeriesSpec, dicom_series, to_bytes

CHUNK = 16 << 20


def _zeros(n: int):
    """n zero bytes in chunks of at most CHUNK (never n at once)."""
    zeros = b"\0" * CHUNK
    while n:
        step = min(n, CHUNK)
        yield zeros[:step]
        n -= step


def _write_zeros(f, n: int) -> None:
    for chunk in _zeros(n):
        f.write(chunk)


def _one_slice(seed: int, rows: int = 16) -> pydicom.Dataset:
    (name, data), *_ = dicom_series(Phantom.random(seed), SeriesSpec(rows=rows, columns=rows, n_slices=1), seed=seed)[0]
    return pydicom.dcmread(io.BytesIO(data))


def _encoded(ds: pydicom.Dataset) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def deflate_bomb_dicom(inflated: int, seed: int = 901) -> bytes:
    """Deflated Explicit VR Little Endian: the data set's stream carries (0099,1010) OB of
    `inflated` zero bytes between the image attributes and the pixel data."""
    ds = _one_slice(seed)
    ds.add_new(0x00990010, "LO", "BOMB")  # the private creator of the element
    low = pydicom.Dataset()
    high = pydicom.Dataset()
    for elem in ds:
        (low if elem.tag < 0x00991010 else high).add(elem)
    meta = ds.file_meta
    meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [head.getvalue(), z.compress(_encoded(low)),
             z.compress(struct.pack("<HH2s2xI", 0x0099, 0x1010, b"OB", inflated))]
    parts += [z.compress(chunk) for chunk in _zeros(inflated)]
    parts += [z.compress(_encoded(high)), z.flush()]
    return b"".join(parts)


def j2k_declared_size_dicom(declared: int = 30000, seed: int = 902) -> bytes:
    """A 64 x 64 object whose JPEG 2000 codestream's SIZ says `declared` x `declared`."""
    ds = _one_slice(seed, rows=64)
    ds.compress(pydicom.uid.JPEG2000Lossless)
    frame = bytearray(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1).__next__())
    siz = frame.index(b"\xff\x51")
    struct.pack_into(">II", frame, siz + 6, declared, declared)  # Xsiz, Ysiz
    ds.PixelData = pydicom.encaps.encapsulate([bytes(frame)])
    return to_bytes(ds)


def zip_bomb(inflated: int, seed: int = 903) -> bytes:
    """A zip whose one member (named like a DICOM slice) inflates to `inflated` bytes."""
    first = to_bytes(_one_slice(seed))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("IM0001.dcm", "w", force_zip64=True) as member:
            member.write(first)
            _write_zeros(member, inflated)
    return buf.getvalue()


def gzip_bomb_nifti(inflated: int) -> bytes:
    """A 64 x 64 x 8 image whose gzip stream goes on with `inflated` bytes of zeros."""
    image = nib.Nifti1Image(np.zeros((64, 64, 8), np.int16), np.eye(4))
    stream = io.BytesIO()
    with gzip.GzipFile(fileobj=stream, mode="wb", compresslevel=6, mtime=0) as gz:
        gz.write(image.to_bytes())
        _write_zeros(gz, inflated)
    return stream.getvalue()
