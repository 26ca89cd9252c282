"""`unet bench dicomweb`: the same archive read from a folder and from a local Orthanc over
DICOMweb, side by side in one run:

    scan        header rows per second: the job's scan of one listing unit (folder: the files'
                first bytes; DICOMweb: QIDO-RS listing and WADO-RS metadata, a request per series)
    read        instances per second: the job's reads of every instance, a series at a time as a
                volume is read (folder: files; DICOMweb: one WADO-RS retrieve per series), one
                process, one request at a time
    segment     `unet segment` end to end, each its own process (Ray start included)

Archive: CT series of 32x32 slices (--scale-series-slices per series; small objects, so that the
per-request cost shows) or --web-size. Orthanc is Debian's (`orthanc`, `orthanc-dicomweb`),
started here on a loopback port with authentication on, loaded through its REST API. Model: an
untrained 8-filter U-Net (speed only).
"""
from __future__ import annotations

import os
import time

from jobs.bench.common import make_bundle
from jobs.bench.orthanc import PASSWORD, USER, Orthanc, installed
from jobs.bench.scale import run_segment, write_archive


def _scan(uri: str) -> tuple[int, float]:
    from unet_core.config import Limits
    from unet_core.segmentation import planning

    t = time.perf_counter()
    rows, counts, _ = planning.scan_partition([planning.Unit(uri, True)], [], Limits(), False,
                                              tuple(planning.listing.real_roots([uri])))
    return counts.scanned, time.perf_counter() - t


def _read(uris: list[str]) -> tuple[int, float]:
    """Every instance, a series at a time as the job's decode reads a volume."""
    from unet_core.io import read_objects

    series: dict[str, list[str]] = {}
    for u in uris:
        series.setdefault(u.rsplit("/", 1)[0], []).append(u)
    t = time.perf_counter()
    total = sum(len(b) for members in series.values() for b in read_objects(members))
    return total, time.perf_counter() - t


def run(args, work: str) -> dict:
    if not installed():
        raise SystemExit("unet bench dicomweb needs Orthanc: apt-get install orthanc orthanc-dicomweb")
    from unet_core.io import listing

    os.makedirs(work, exist_ok=True)
    os.environ.setdefault("DICOMWEB_USER", USER)
    os.environ.setdefault("DICOMWEB_PASSWORD", PASSWORD)
    slices = args.scale_series_slices
    n_series = max(1, args.web_objects // slices)
    archive = os.path.join(work, f"archive-{n_series}x{slices}")
    if not os.path.isdir(archive):
        write_archive(archive, 0, n_series, slices)
    files = [e.uri for e in listing.iter_objects(archive)]
    bundle = os.path.join(work, "bundle")
    if not os.path.isdir(bundle):
        make_bundle(bundle, 32, 8)
    result: dict = {"instances": len(files), "series": n_series, "slices_per_series": slices}
    with Orthanc(os.path.join(work, f"orthanc-{time.time_ns()}")) as pacs:
        t = time.perf_counter()
        pacs.upload(files)
        result["load_s"] = time.perf_counter() - t
        web = [e.uri for e in listing.iter_objects(pacs.dicomweb)]
        for side, uri, uris in (("folder", archive, files), ("dicomweb", pacs.dicomweb, web)):
            n, s = _scan(uri)
            result[f"{side}_scan_per_s"] = n / s
            n_bytes, s = _read(uris)
            result[f"{side}_read_per_s"] = len(uris) / s
            result[f"{side}_read_mib_per_s"] = n_bytes / 2**20 / s
        for side, uri in (("folder", archive), ("dicomweb", pacs.dicomweb)):
            r = run_segment(uri, bundle, os.path.join(work, f"out-{side}-{time.time_ns()}"),
                            ("--dicomweb-concurrency", str(args.dicomweb_concurrency)) if side == "dicomweb" else ())
            result[f"{side}_segment_s"] = r["wall_s"]
    print(f"dicomweb: {len(files):,} instances ({n_series} series of {slices} 32x32 slices), Orthanc on loopback "
          f"(loaded in {result['load_s']:.0f}s)")
    print(f"  {'':<10} {'folder':>12} {'DICOMweb':>12} {'DICOMweb / folder':>18}")
    for key, label in (("scan_per_s", "scan /s"), ("read_per_s", "read /s"), ("segment_s", "segment s")):
        a, b = result[f"folder_{key}"], result[f"dicomweb_{key}"]
        print(f"  {label:<10} {a:>12.1f} {b:>12.1f} {b / a:>17.2f}x")
    return result
