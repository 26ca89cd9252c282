"""`unet bench scale --scale-s3-objects N`: the S3 requests of a `unet segment` first run and of a
re-run with nothing new, input and output both on moto's S3 server (127.0.0.1, in this process),
counted by the server per kind (GET, PUT, HEAD, LIST, DELETE) and per place:

    input            the archive's objects (header scans, then pixels)
    lease            the output's lease file: its heartbeat and every fence check
    <folder>         each of the output's folders (series_index, volumes, plan, records, masks, ...)
    run files        layout.json, summary.json, plan.parquet, report.html, report/

The lease's GETs against the volumes segmented and the parts written say what fencing costs on S3
(a fence check reads the lease: unet_core/io/lease.py). Each run is a separate process.
"""
from __future__ import annotations

import os
import threading
from collections import Counter

from jobs.bench.scale import run_segment, write_archive
from jobs.bench.zipped import CountingS3
from unet_core.io.lease import LEASE_FILE

BUCKET = "scale-s3"
INPUT, OUTPUT = "archive/", "out/"


class PlaceCounter:
    """WSGI middleware: requests by (kind, place) of the keys of one bucket."""

    def __init__(self, app):
        self.app, self.counts = app, Counter()
        self._lock = threading.Lock()

    def reset(self) -> Counter:
        with self._lock:
            counts, self.counts = self.counts, Counter()
        return counts

    def __call__(self, environ, start_response):
        method, query = environ.get("REQUEST_METHOD", ""), environ.get("QUERY_STRING", "")
        bucket, _, key = environ.get("PATH_INFO", "").lstrip("/").partition("/")
        if method == "GET" and (not key or "list-type" in query or "prefix=" in query):
            kind, key = "LIST", _prefix_of(query)
        else:
            kind = "DELETE" if method == "POST" and "delete" in query else method
        with self._lock:
            self.counts[(kind, place_of(key))] += 1
        return self.app(environ, start_response)


def _prefix_of(query: str) -> str:
    from urllib.parse import parse_qs

    return parse_qs(query).get("prefix", [""])[0]


def place_of(key: str) -> str:
    if key.startswith(INPUT):
        return "input"
    if not key.startswith(OUTPUT):
        return "other"
    rest = key[len(OUTPUT):]
    if rest == LEASE_FILE:
        return "lease"
    return rest.split("/", 1)[0] + "/" if "/" in rest else "run files"


def _upload(folder: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", config=Config(max_pool_connections=16))
    s3.create_bucket(Bucket=BUCKET)
    files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda p: s3.upload_file(p, BUCKET, INPUT + os.path.relpath(p, folder)), files))


def run(args, work: str, bundle: str) -> dict:
    """A first run and a re-run with nothing new on S3; their requests by kind and place."""
    slices = args.scale_series_slices
    n_series = max(1, args.scale_s3_objects // slices)
    os.makedirs(work, exist_ok=True)
    local = os.path.join(work, "s3-archive")
    write_archive(local, 0, n_series, slices)
    out = f"s3://{BUCKET}/{OUTPUT.rstrip('/')}"
    with CountingS3() as s3:
        counter = PlaceCounter(s3.counter.app)
        s3.counter.app = counter
        _upload(local)
        counter.reset()
        runs = {}
        for name, extra in (("first", ("--overwrite",)), ("rerun_nothing_new", ())):
            r = run_segment(f"s3://{BUCKET}/{INPUT.rstrip('/')}", bundle, out, extra, log=os.path.join(work, name))
            r["requests"] = {f"{k} {p}": n for (k, p), n in sorted(counter.reset().items())}
            runs[name] = r
    _print(n_series * slices, runs)
    return {"objects": n_series * slices, **runs}


def _print(objects: int, runs: dict) -> None:
    first, again = runs["first"], runs["rerun_nothing_new"]
    print(f"scale on S3 (moto, loopback): {objects:,} objects; requests as the server counted them")
    keys = sorted(set(first["requests"]) | set(again["requests"]))
    print(f"  {'requests':<32}{'first run':>12}{'re-run':>12}")
    for k in keys:
        print(f"  {k:<32}{first['requests'].get(k, 0):>12,}{again['requests'].get(k, 0):>12,}")
    volumes = first["segmented_now"]
    lease_gets = first["requests"].get("GET lease", 0)
    print(f"  first run: {first['wall_s']:.1f} s, {volumes:,} volumes segmented, {first['volume_table_parts_written']} "
          f"table parts written; lease GETs per volume: {lease_gets / max(volumes, 1):.2f}")
    print(f"  re-run: {again['wall_s']:.1f} s ({again['wall_s'] / first['wall_s']:.3f} of the first run)")
