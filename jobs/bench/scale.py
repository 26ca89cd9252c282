"""`unet bench scale`: `unet segment` on archives of N and 10N small objects, each run a separate
process, side by side:

    peak driver RSS            sampled every 0.1 s on the `unet segment` process (10N vs N)
    seconds per object         the whole process, Ray start included (10N vs N)
    header scan                objects/s per core of the listing + header-scan + planning phase
    re-run, nothing new        as a fraction of the first run (process time)
    re-run, 1% new series      as a fraction of the first run, and how many volumes it segmented

Archives: CT series of 32x32 slices (50 objects per series by default), one folder per series,
written here by a process pool. Model: an untrained 8-filter U-Net at 32x32 (speed only).
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict

import psutil

from jobs.bench.common import make_bundle
from unet_core.segmentation.summary import RunSummary
from unet_core.synthetic import Phantom, SeriesSpec, dicom_series

SLICE = 32
EXTRAPOLATE_TO = 10_000_000


def _write_series(args: tuple[str, int, int, int]) -> int:
    root, first, last, slices = args

    spec = SeriesSpec(rows=SLICE, columns=SLICE, n_slices=slices, pixel_spacing=(12.0, 12.0), slice_step=5.0)
    for s in range(first, last):
        folder = os.path.join(root, f"series_{s:06d}")
        os.makedirs(folder, exist_ok=True)
        for name, data in dicom_series(Phantom.random(s), spec, seed=s, noise=False)[0]:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
    return last - first


def write_archive(root: str, first: int, last: int, slices: int) -> None:
    """Series `first` .. `last - 1`, written by one process per core."""
    step = 50
    jobs = [(root, a, min(a + step, last), slices) for a in range(first, last, step)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_write_series, jobs))


class PeakRSS:
    """Peak resident memory of one process, sampled."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            proc = psutil.Process(self.pid)
            while not self._stop.is_set():
                self.peak = max(self.peak, proc.memory_info().rss)
                self._stop.wait(self.interval)
        except psutil.NoSuchProcess:
            return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_segment(archive: str, bundle: str, out: str, extra: tuple[str, ...] = (), log: str | None = None) -> dict:
    """`unet segment` as its own process: wall time, the driver's peak RSS, its summary (its output
    goes to `log`, by default beside a local output)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "jobs.cli", "segment", "--input", archive, "--model", bundle, "--output", out,
           "--batch-size", "64", *extra]
    t = time.perf_counter()
    log = log or out.rstrip("/") + ".log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
        rss = PeakRSS(proc.pid)
        rc = proc.wait()
    wall = time.perf_counter() - t
    peak = rss.stop()
    if rc not in (0, 3):
        raise RuntimeError(f"unet segment exited {rc}; see {log}")
    return {"wall_s": wall, "driver_peak_rss": peak, **asdict(RunSummary.read(out))}


def _one(work: str, n_series: int, slices: int, bundle: str) -> dict:
    archive, out = os.path.join(work, "archive"), os.path.join(work, "out")
    t = time.perf_counter()
    write_archive(archive, 0, n_series, slices)
    written = time.perf_counter() - t
    first = run_segment(archive, bundle, out)
    again = run_segment(archive, bundle, out)
    added = max(1, n_series // 100)
    write_archive(archive, n_series, n_series + added, slices)
    grown = run_segment(archive, bundle, out)
    return {"objects": n_series * slices, "series": n_series, "write_archive_s": written, "first": first,
            "rerun_nothing_new": again, "rerun_1pct_new": grown, "added_series": added}


def run(args, work: str) -> dict:
    """The local archives (unless --scale-objects 0), then the S3 requests with --scale-s3-objects."""
    os.makedirs(work, exist_ok=True)
    bundle = os.path.join(work, "bundle")
    make_bundle(bundle, SLICE, 8)
    out = _local(args, work, bundle) if args.scale_objects else {}
    if args.scale_s3_objects:
        from jobs.bench import scale_s3

        out["s3"] = scale_s3.run(args, os.path.join(work, "s3"), bundle)
    return out


def _local(args, work: str, bundle: str) -> dict:
    slices = args.scale_series_slices
    sizes = [args.scale_objects, args.scale_objects * args.scale_factor]
    runs = {n: _one(os.path.join(work, f"n{n}"), n // slices, slices, bundle) for n in sizes}
    small, large = runs[sizes[0]], runs[sizes[1]]
    cores = os.cpu_count() or 1

    def per_object(r: dict) -> float:
        return r["first"]["wall_s"] / r["objects"]

    def scan_rate(r: dict) -> float:
        return r["first"]["objects_listed"] / r["first"]["scan_seconds"] / cores

    growth = large["first"]["driver_peak_rss"] / small["first"]["driver_peak_rss"]
    per_obj_bytes = max(0.0, (large["first"]["driver_peak_rss"] - small["first"]["driver_peak_rss"])
                        / (large["objects"] - small["objects"]))
    out = {
        "sizes": sizes, "runs": runs, "driver_rss_growth": growth, "seconds_per_object_ratio": per_object(large) / per_object(small),
        "driver_bytes_per_object": per_obj_bytes,
        "driver_rss_at_1e7_estimate": small["first"]["driver_peak_rss"] + per_obj_bytes * (EXTRAPOLATE_TO - small["objects"]),
    }
    for tag, r in (("small", small), ("large", large)):
        out[f"{tag}_rerun_fraction"] = r["rerun_nothing_new"]["wall_s"] / r["first"]["wall_s"]
        out[f"{tag}_grown_fraction"] = r["rerun_1pct_new"]["wall_s"] / r["first"]["wall_s"]
        out[f"{tag}_scan_objects_per_s_per_core"] = scan_rate(r)

    mib = 1024 ** 2
    print(f"scale: archives of {sizes[0]:,} and {sizes[1]:,} objects ({slices} x {SLICE}x{SLICE} slices per series), "
          f"{cores} cores; every run a separate `unet segment` process")
    print(f"  {'measure':<44}{sizes[0]:>14,}{sizes[1]:>14,}   ratio   target")
    rows = [
        ("peak driver RSS (MiB)", small["first"]["driver_peak_rss"] / mib, large["first"]["driver_peak_rss"] / mib,
         growth, "<= 1.15"),
        ("first run, seconds", small["first"]["wall_s"], large["first"]["wall_s"], None, ""),
        ("seconds per object (ms)", per_object(small) * 1e3, per_object(large) * 1e3, out["seconds_per_object_ratio"],
         "<= 1.1"),
        ("header scan, objects/s per core", scan_rate(small), scan_rate(large), None, "reported"),
        ("re-run, nothing new: seconds", small["rerun_nothing_new"]["wall_s"], large["rerun_nothing_new"]["wall_s"],
         None, ""),
        ("  as a fraction of the first run", out["small_rerun_fraction"], out["large_rerun_fraction"], None, "<= 0.10"),
        ("  headers read", small["rerun_nothing_new"]["headers_read"], large["rerun_nothing_new"]["headers_read"], None, "0"),
        ("re-run, 1% new series: seconds", small["rerun_1pct_new"]["wall_s"], large["rerun_1pct_new"]["wall_s"], None, ""),
        ("  as a fraction of the first run", out["small_grown_fraction"], out["large_grown_fraction"], None, "<= 0.15"),
        ("  volumes segmented (series added)", small["rerun_1pct_new"]["segmented_now"],
         large["rerun_1pct_new"]["segmented_now"], None, f"{small['added_series']} / {large['added_series']}"),
    ]
    for name, a, b, ratio, target in rows:
        r = f"{ratio:6.2f}x" if ratio is not None else "       "
        print(f"  {name:<44}{a:>14,.2f}{b:>14,.2f}  {r}  {target}")
    print(f"  driver memory per object: {per_obj_bytes:,.0f} bytes; at {EXTRAPOLATE_TO:,} objects the driver would peak "
          f"near {out['driver_rss_at_1e7_estimate'] / mib:,.0f} MiB")
    return out
