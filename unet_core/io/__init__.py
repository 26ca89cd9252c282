"""Storage and volume I/O. This file only hands names on: `import unet_core.io.storage` loads
storage alone (no pydicom, nibabel or scipy); the volume readers load on first use.

    storage    URIs, local or s3://: read, write (then publish), list, delete, retries
    listing    listing an archive level by level; archive: zip exports; dicomweb: a PACS
    volumes    read_object(s), read_volume: bytes and Volumes of stored objects
    nifti, dicom/, mask_codec, orientation, images2d: the formats
"""
from __future__ import annotations

import importlib
from typing import Any

# name -> the module of this package that defines it
_HANDED_ON = {"read_object": "volumes", "read_objects": "volumes", "read_volume": "volumes",
              "Volume": "volumes", "mask_to_nifti_bytes": "nifti"}

__all__ = sorted(_HANDED_ON)


def __getattr__(name: str) -> Any:
    if name not in _HANDED_ON:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HANDED_ON[name]}"), name)
