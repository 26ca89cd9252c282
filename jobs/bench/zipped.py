"""`unet bench zip`: the same archive as a folder and as one zip export, locally and on S3, side by
side, every run a separate `unet segment` process:

    time                the whole process, Ray start included (zip vs folder, locally and on S3)
    GETs                object GET requests the run sent to the S3 server, and the bytes they
                        returned, against the archive's objects and size

Archive: CT series of 32x32 slices (50 objects per series), one folder per series; the zip holds
the same files under the same relative names, deflated as a PACS or viewer exports them. S3 is
moto's server on 127.0.0.1, in this process, behind a counter of the requests it serves. Model:
an untrained 8-filter U-Net at 32x32 (speed only). Needs the `test` extra (moto) for the S3 half.

    --quick             no `unet segment` runs: the zip's volumes read in this process from the
                        counted S3 server as a decode task reads them (`read_objects` of each
                        series' members), bytes returned against the members' stored bytes

Checks (`--check`, targets in jobs/bench/common.py): the bytes S3 returned for each volume's
members against their stored bytes (the --quick measurement, also made after a full run), and,
full only, the zip's time against the folder's, locally and on S3. A full run also prints its
whole-run bytes against every member read twice (header scan, then decode, as the folder run reads
every object twice), which adds the central directory once per process and the local headers.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor


class RequestCounter:
    """WSGI middleware: the requests an app serves by method, and the body bytes of its GETs."""

    def __init__(self, app):
        self.app, self.counts, self.get_bytes = app, Counter(), 0
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.counts, self.get_bytes = Counter(), 0

    def snapshot(self) -> dict:
        with self._lock:
            return {"requests": dict(self.counts), "get_bytes": self.get_bytes}

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "")
        query = environ.get("QUERY_STRING", "")
        # A LIST is a GET on the bucket with list parameters; an object GET names a key.
        key = environ.get("PATH_INFO", "").lstrip("/").partition("/")[2]
        kind = "LIST" if method == "GET" and (not key or "list-type" in query or "prefix=" in query) else method
        with self._lock:
            self.counts[kind] += 1
        body = self.app(environ, start_response)
        if kind != "GET":
            return body
        return self._counted(body)

    def _counted(self, body):
        try:
            for chunk in body:
                with self._lock:
                    self.get_bytes += len(chunk)
                yield chunk
        finally:
            close = getattr(body, "close", None)
            if close:
                close()


class CountingS3:
    """moto's S3 server on a free loopback port behind a RequestCounter; the AWS variables of
    this process (and so of the jobs it starts) point at it while it runs."""

    def __enter__(self) -> "CountingS3":
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise

        self.counter = RequestCounter(DomainDispatcherApplication(create_backend_app))
        self._server = make_server("127.0.0.1", 0, self.counter, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION")
        self._saved = {k: os.environ.get(k) for k in keys}
        os.environ.update(AWS_ACCESS_KEY_ID="bench-key-id", AWS_SECRET_ACCESS_KEY="bench-secret",
                          AWS_ENDPOINT_URL=self.endpoint, AWS_REGION="us-east-1")
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def write_zip(folder: str, path: str) -> int:
    """The folder's files as one deflated zip, under their relative names; returns the member count."""
    names = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in names:
            z.write(os.path.join(folder, name), name)
    return len(names)


def upload(folder: str, zip_path: str, bucket: str) -> None:
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", config=Config(max_pool_connections=16))
    s3.create_bucket(Bucket=bucket)
    files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda p: s3.upload_file(p, bucket, "folder/" + os.path.relpath(p, folder)), files))
    s3.upload_file(zip_path, bucket, "zip/archive.zip")


def _side_by_side(inputs: dict[str, str], bundle: str, work: str, counter: RequestCounter | None) -> dict:
    from jobs.bench.scale import run_segment

    os.makedirs(work, exist_ok=True)
    out = {}
    for name, uri in inputs.items():
        if counter is not None:
            counter.reset()
        run = run_segment(uri, bundle, os.path.join(work, f"out-{name}"), ("--overwrite",))
        if counter is not None:
            run.update(counter.snapshot())
        out[name] = run
    return out


def member_bytes(zip_path: str) -> int:
    """The members' stored (compressed) bytes: what reading every member once must fetch."""
    with zipfile.ZipFile(zip_path) as z:
        return sum(i.compress_size for i in z.infolist())


def _volumes_read(zip_path: str) -> dict:
    """Each series folder of the zip read from the counted S3 server as a decode task reads a
    volume (`read_objects` of its members; the archive's central directory, read once per
    process, is counted apart): bytes returned against the members' stored bytes."""
    from unet_core.io import archive, read_objects

    with zipfile.ZipFile(zip_path) as z:
        infos = [i for i in z.infolist() if not i.is_dir()]
    by_series: dict[str, list[zipfile.ZipInfo]] = {}
    for info in infos:
        by_series.setdefault(os.path.dirname(info.filename), []).append(info)
    with CountingS3() as s3:
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench-zip-quick")
        uri = "s3://bench-zip-quick/archive.zip"
        with open(zip_path, "rb") as f:
            boto3.client("s3").put_object(Bucket="bench-zip-quick", Key="archive.zip", Body=f.read())
        archive._SHARED.clear()
        s3.counter.reset()
        archive.Archive.shared(uri)
        directory = s3.counter.snapshot()
        s3.counter.reset()
        t = time.perf_counter()
        for members in by_series.values():
            read_objects([f"{uri}!/{i.filename}" for i in members])
        seconds = time.perf_counter() - t
        served = s3.counter.snapshot()
        archive._SHARED.clear()
    stored = sum(i.compress_size for i in infos)
    return {"volumes": len(by_series), "members": len(infos), "member_bytes": stored, "get_bytes": served["get_bytes"],
            "gets": served["requests"].get("GET", 0), "directory_bytes": directory["get_bytes"], "read_s": seconds,
            "ratio": served["get_bytes"] / stored}


def run(args, work: str) -> dict:
    # Imported here: the request counter and the S3 server above serve tests too, without Ray.
    from jobs.bench.common import TARGETS, Check, make_bundle
    from jobs.bench.scale import SLICE, write_archive

    os.makedirs(work, exist_ok=True)
    slices = args.scale_series_slices
    if args.quick:
        n_series = max(1, args.zip_objects // slices)
        folder, zip_path = os.path.join(work, "archive"), os.path.join(work, "archive.zip")
        write_archive(folder, 0, n_series, slices)
        write_zip(folder, zip_path)
        q = _volumes_read(zip_path)
        print(f"zip --quick: {q['members']:,} members in {q['volumes']} series folders, each series read from moto's "
              "S3 server as a decode task reads a volume")
        print(f"  bytes returned {q['get_bytes']:,} for {q['member_bytes']:,} stored bytes of members: "
              f"{q['ratio']:.3f}x (target {TARGETS['zip.s3_bytes']}); {q['gets']:,} GETs; central directory "
              f"{q['directory_bytes']:,} bytes, once per process; {q['read_s']:.1f} s")
        return {"quick": q, "checks": [Check("zip.s3_bytes", q["ratio"])]}
    bundle = os.path.join(work, "bundle")
    make_bundle(bundle, SLICE, 8)
    n_series = max(1, args.zip_objects // slices)
    folder, zip_path = os.path.join(work, "archive"), os.path.join(work, "archive.zip")
    t = time.perf_counter()
    write_archive(folder, 0, n_series, slices)
    members = write_zip(folder, zip_path)
    written = time.perf_counter() - t
    folder_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
    zip_bytes = os.path.getsize(zip_path)
    result: dict = {"objects": members, "series": n_series, "folder_bytes": folder_bytes, "zip_bytes": zip_bytes,
                    "write_s": written}
    result["local"] = _side_by_side({"folder": folder, "zip": zip_path}, bundle, os.path.join(work, "local"), None)
    try:
        import moto  # noqa: F401
    except ImportError:
        print("zip: moto is not installed (the `test` extra): the S3 half is not measured")
    else:
        with CountingS3() as s3:
            t = time.perf_counter()
            upload(folder, zip_path, "bench-zip")
            result["upload_s"] = time.perf_counter() - t
            result["s3"] = _side_by_side({"folder": "s3://bench-zip/folder", "zip": "s3://bench-zip/zip/archive.zip"},
                                         bundle, os.path.join(work, "s3"), s3.counter)
    result["member_bytes"] = member_bytes(zip_path)
    _print(result)
    checks = [Check(f"zip.{where}_time", result[f"{where}_ratio"]) for where in ("local", "s3") if where in result]
    if "s3" in result:  # the volumes' reads alone (a whole run adds a central directory per process)
        q = result["volumes_read"] = _volumes_read(zip_path)
        print(f"  S3 zip, each volume's members read as a decode task reads them: {q['ratio']:.3f}x their stored "
              f"bytes   target {TARGETS['zip.s3_bytes']}")
        checks.append(Check("zip.s3_bytes", q["ratio"]))
    result["checks"] = checks
    return result


def _print(r: dict) -> None:
    from jobs.bench.scale import SLICE

    mib = 2 ** 20
    print(f"zip: {r['objects']:,} objects ({r['series']} series of {SLICE}x{SLICE} slices), "
          f"{r['folder_bytes'] / mib:,.1f} MiB as files, {r['zip_bytes'] / mib:,.1f} MiB as one zip; "
          "every run a separate `unet segment` process")
    print(f"  {'where':<8}{'folder s':>10}{'zip s':>10}{'zip/folder':>12}   target <= 1.2x")
    for where in ("local", "s3"):
        if where not in r:
            continue
        f, z = r[where]["folder"], r[where]["zip"]
        ratio = z["wall_s"] / f["wall_s"]
        r[f"{where}_ratio"] = ratio
        print(f"  {where:<8}{f['wall_s']:>10.1f}{z['wall_s']:>10.1f}{ratio:>11.2f}x   "
              f"volumes ok {f['volumes_ok']} / {z['volumes_ok']}")
    if "s3" in r:
        for name, size in (("folder", r["folder_bytes"]), ("zip", r["zip_bytes"])):
            run = r["s3"][name]
            gets = run["requests"].get("GET", 0)
            print(f"  S3 {name:<6}: {gets:,} GETs ({gets / r['objects']:.3f} per object), "
                  f"{run['get_bytes'] / mib:,.1f} MiB returned ({run['get_bytes'] / size:.2f}x the input), "
                  f"{run['requests'].get('HEAD', 0):,} HEADs, {run['requests'].get('LIST', 0):,} LISTs")
        print(f"  S3 zip, the whole run against every member read twice (scan, decode): "
              f"{r['s3']['zip']['get_bytes'] / (2 * r['member_bytes']):.3f}x (local headers, and the central "
              "directory once per process)")
