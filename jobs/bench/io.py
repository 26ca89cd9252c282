"""`unet bench io`: header-scan objects/s and full-decode slices/s on one core (DICOM CT series)."""
from __future__ import annotations

import os
import time

from jobs.bench.common import rate


def run(args, work: str) -> dict:
    """One process, one core: what a single Ray task achieves."""
    from unet_core.io.dicom import HEADER_PREFIX_BYTES, group_series, read_series, scan_header
    from unet_core.synthetic import Phantom, SeriesSpec, dicom_series

    os.makedirs(work, exist_ok=True)
    files = []
    for s in range(args.io_series):
        spec = SeriesSpec(rows=512, columns=512, n_slices=args.io_slices, pixel_spacing=(0.7, 0.7), slice_step=2.5)
        for name, data in dicom_series(Phantom.random(s), spec, seed=s)[0]:
            path = os.path.join(work, f"s{s}", name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
            files.append(path)
    n = len(files)
    t = time.perf_counter()
    headers = []
    for path in files:
        with open(path, "rb") as f:
            headers.append(scan_header(f.read(HEADER_PREFIX_BYTES), path, size=os.path.getsize(path)))
    scan = time.perf_counter() - t
    groups, _ = group_series(headers)
    t = time.perf_counter()
    slices = 0
    for g in groups:
        blobs = [open(u, "rb").read() for u in g.uris]
        slices += read_series(g, blobs).shape[2]
    decode = time.perf_counter() - t
    out = {"files": n, "header_scan_files_per_s": rate(n, scan), "decode_slices_per_s": rate(slices, decode),
           "slice": "512x512 int16, explicit VR little endian"}
    print(f"io: header scan {out['header_scan_files_per_s']:.0f} files/s per core (first {HEADER_PREFIX_BYTES // 1024} KiB "
          f"of each object); full decode to HU {out['decode_slices_per_s']:.0f} slices/s per core ({n} files of 512x512)")
    return out
