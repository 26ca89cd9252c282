"""2D images with masks, as in the seed documents (PNG / TIFF), paired by case name."""
from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from unet_core.config import Limits
from unet_core.errors import EmptyFileError, InvalidVolumeError, ResourceLimitError, UnreadableFileError

DEFAULT_MAX_PIXELS = Limits().max_volume_bytes // 4  # float32 pixels within the per-volume budget
IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
MASK_SUFFIX = re.compile(r"([_-](mask|label|labels|seg|gt))$", re.IGNORECASE)


def is_image2d_name(uri: str) -> bool:
    return uri.lower().endswith(IMAGE_SUFFIXES)


def read_image2d(data: bytes, uri: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, int]:
    """(pixels (H, W), bits) of a greyscale 8- or 16-bit image; colour is converted to grey. The
    size the file declares is checked against `max_pixels` before any pixel is decoded (PIL's own
    bomb limit is set from it too)."""
    if not data:
        raise EmptyFileError(f"{uri}: empty file (0 bytes)", uri=uri)
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
        if img.size[0] * img.size[1] > max_pixels:
            raise ResourceLimitError(f"{uri}: the image declares {img.size[0]} x {img.size[1]} pixels, above the "
                                     f"budget of {max_pixels} (--max-volume-bytes / 4); not decoded", uri=uri)
        img.load()
    except Image.DecompressionBombError as exc:
        raise ResourceLimitError(f"{uri}: the image is larger than the budget of {max_pixels} pixels", uri=uri) from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise UnreadableFileError(f"{uri}: not a readable PNG/TIFF image ({type(exc).__name__})", uri=uri) from exc
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img).astype(np.uint16)
        return arr, 16
    if img.mode != "L":
        img = img.convert("L")
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise InvalidVolumeError(f"{uri}: expected a 2D image, got shape {arr.shape}", uri=uri)
    return arr.astype(np.uint8), 8


def mask_from_image(pixels: np.ndarray, bits: int, labels: bool = False) -> np.ndarray:
    """The seed's binary mask (pixel / max > 0.5) as uint8 {0, 1}; with `labels`, values kept."""
    if labels:
        return pixels.astype(np.uint8)
    return (pixels.astype(np.float32) / (255.0 if bits == 8 else 65535.0) > 0.5).astype(np.uint8)


def case_id_of(uri: str, is_mask: bool = False) -> str:
    stem = uri.rstrip("/").rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    if stem.lower().endswith(".nii"):
        stem = stem[:-4]
    return MASK_SUFFIX.sub("", stem) if is_mask else stem


@dataclass
class Pairing:
    pairs: dict[str, tuple[str, str]] = field(default_factory=dict)  # case id -> (image, mask)
    unpaired_images: list[str] = field(default_factory=list)
    unpaired_masks: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


def pair_by_case(images: list[str], masks: list[str]) -> Pairing:
    """Pair image and mask URIs by case id (file stem, mask suffixes like `_mask` removed),
    never by sorted position. Reports what did not pair and case ids that occur twice."""
    out = Pairing()
    by_image: dict[str, str] = {}
    by_mask: dict[str, str] = {}
    for table, uris, is_mask in ((by_image, images, False), (by_mask, masks, True)):
        for uri in uris:
            case = case_id_of(uri, is_mask)
            if case in table:
                out.duplicates.append(uri)
            else:
                table[case] = uri
    for case in sorted(by_image):
        if case in by_mask:
            out.pairs[case] = (by_image[case], by_mask[case])
        else:
            out.unpaired_images.append(by_image[case])
    out.unpaired_masks = sorted(by_mask[c] for c in by_mask if c not in by_image)
    return out
