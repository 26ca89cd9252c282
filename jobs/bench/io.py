"""`unet bench io`: header scan and full decode on one core, each beside the plain library doing
the same work on the same bytes in the same run (what a single Ray task achieves per core).

    header scan       `scan_header` on each object's first 64 KiB, against
                      `pydicom.dcmread(prefix, stop_before_pixels=True, specific_tags=...)`
    full decode       `read_series` (pixels to HU, geometry, ordering, stacking), against
                      `dcmread(blob).pixel_array` + rescale per slice, for uncompressed and RLE
    JPEG 2000         `read_series` against the codec alone (pylibjpeg-openjpeg on each frame)

The data is a CT series of 512x512 slices written here, held in memory (no disk time on either
side). Each side runs `--io-repeats` times, alternating which goes first; the best time of each
counts. Times are the process's CPU time (`time.process_time`), not wall time: both sides are
single-threaded, and on a machine shared with other work the wall clock counts the time spent
waiting for a core, which is noise. Targets: jobs/bench/common.py (TARGETS); `--check` exits 3 when
a ratio falls below its target.
"""
from __future__ import annotations

import io
import logging
import time

import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000Lossless, RLELossless

from jobs.bench.common import TARGETS, Check
from unet_core.io.dicom.grouping import group_series
from unet_core.io.dicom.header import scan_header
from unet_core.io.dicom.parse import HEADER_PREFIX_BYTES
from unet_core.io.dicom.series import read_series
from unet_core.synthetic import Phantom, SeriesSpec, dicom_series, to_bytes

SCAN_TAGS = ["SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "Modality", "Rows",
             "Columns", "NumberOfFrames", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
             "SliceThickness", "InstanceNumber"]


def _series(n_slices: int, syntax=None) -> list[tuple[str, bytes]]:
    logging.getLogger("openjpeg").setLevel(logging.WARNING)  # an INFO line per encoded tile
    spec = SeriesSpec(rows=512, columns=512, n_slices=n_slices, pixel_spacing=(0.7, 0.7), slice_step=2.5)
    files = [(f"mem://s/{name}", data) for name, data in dicom_series(Phantom.random(1), spec, seed=1)[0]]
    if syntax is None:
        return files
    out = []
    for uri, data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.compress(syntax)
        out.append((uri, to_bytes(ds)))
    return out


def _best(fns: dict, repeats: int) -> dict:
    """Best CPU time of each function over `repeats` rounds, the order flipped every round."""
    best = {k: float("inf") for k in fns}
    for r in range(repeats):
        for k, fn in (list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]):
            t = time.process_time()
            fn()
            best[k] = min(best[k], time.process_time() - t)
    return best


def _decode_pair(files: list[tuple[str, bytes]], repeats: int) -> dict:
    (group,), _ = group_series([scan_header(d, u) for u, d in files])
    by_uri = dict(files)
    blobs = [by_uri[u] for u in group.uris]

    def ours():
        read_series(group, blobs)

    def library():
        for b in blobs:
            ds = pydicom.dcmread(io.BytesIO(b))
            ds.pixel_array.astype(np.float32) * np.float32(ds.RescaleSlope) + np.float32(ds.RescaleIntercept)

    best = _best({"ours": ours, "library": library}, repeats)
    n = len(blobs)
    return {"slices": n, "ours_slices_per_s": n / best["ours"], "library_slices_per_s": n / best["library"],
            "ratio": best["library"] / best["ours"]}


def _j2k_pair(files: list[tuple[str, bytes]], repeats: int) -> dict:
    import openjpeg

    (group,), _ = group_series([scan_header(d, u) for u, d in files])
    by_uri = dict(files)
    blobs = [by_uri[u] for u in group.uris]
    frames = [next(generate_frames(pydicom.dcmread(io.BytesIO(b)).PixelData, number_of_frames=1)) for b in blobs]

    def ours():
        read_series(group, blobs)

    def codec():
        for f in frames:
            openjpeg.decode(f)

    best = _best({"ours": ours, "codec": codec}, repeats)
    n = len(blobs)
    return {"slices": n, "ours_slices_per_s": n / best["ours"], "codec_slices_per_s": n / best["codec"],
            "ratio": best["codec"] / best["ours"]}


def _scan_pair(files: list[tuple[str, bytes]], repeats: int) -> dict:
    prefixes = [(u, d[:HEADER_PREFIX_BYTES], len(d)) for u, d in files]

    def ours():
        for u, p, size in prefixes:
            scan_header(p, u, size)

    def library():
        for _, p, _ in prefixes:
            pydicom.dcmread(io.BytesIO(p), stop_before_pixels=True, specific_tags=SCAN_TAGS)

    best = _best({"ours": ours, "library": library}, repeats)
    n = len(prefixes)
    return {"objects": n, "ours_objects_per_s": n / best["ours"], "library_objects_per_s": n / best["library"],
            "ratio": best["library"] / best["ours"]}


def run(args, work: str) -> dict:
    """One process, one core."""
    n, repeats = args.io_slices, args.io_repeats
    plain = _series(n)
    out = {
        "slice": "512x512 CT, 12 bits stored in 16",
        "header_scan": _scan_pair(plain, repeats),
        "uncompressed": _decode_pair(plain, repeats),
        "rle": _decode_pair(_series(n, RLELossless), repeats),
    }
    try:
        out["j2k"] = _j2k_pair(_series(max(4, n // 6), JPEG2000Lossless), max(2, repeats // 2))
    except ImportError as exc:  # JPEG 2000 needs the codecs extra to encode and decode
        out["j2k"] = {"skipped": f"{exc}; install the codecs extra (pip install 'unet-ray[codecs]')"}
    s, u, r, j = out["header_scan"], out["uncompressed"], out["rle"], out["j2k"]
    checks = [Check("io.header_scan", s["ratio"]), Check("io.uncompressed", u["ratio"]), Check("io.rle", r["ratio"])]
    print(f"io: one core, {out['slice']}, in memory; best CPU time of {repeats} rounds, order alternating")
    print(f"  {'':<34}{'ours':>12}{'library':>12}   ratio   target")
    print(f"  {'header scan, objects/s (64 KiB)':<34}{s['ours_objects_per_s']:>12,.0f}{s['library_objects_per_s']:>12,.0f}"
          f"   {s['ratio']:.2f}x   {TARGETS['io.header_scan']}")
    print(f"  {'full decode, uncompressed, sl/s':<34}{u['ours_slices_per_s']:>12,.0f}{u['library_slices_per_s']:>12,.0f}"
          f"   {u['ratio']:.2f}x   {TARGETS['io.uncompressed']}")
    print(f"  {'full decode, RLE, slices/s':<34}{r['ours_slices_per_s']:>12,.0f}{r['library_slices_per_s']:>12,.0f}"
          f"   {r['ratio']:.2f}x   {TARGETS['io.rle']}")
    if "skipped" in j:
        print(f"  {'JPEG 2000 vs codec alone':<34}  skipped: {j['skipped']}")
    else:
        checks.append(Check("io.j2k", j["ratio"]))
        print(f"  {'JPEG 2000 vs codec alone, sl/s':<34}{j['ours_slices_per_s']:>12,.1f}{j['codec_slices_per_s']:>12,.1f}"
              f"   {j['ratio']:.2f}x   {TARGETS['io.j2k']}")
    print("  library: dcmread(stop_before_pixels, specific_tags) for the scan; dcmread + pixel_array + rescale per "
          "slice for decode; openjpeg.decode per frame for JPEG 2000")
    out["checks"] = checks
    return out
