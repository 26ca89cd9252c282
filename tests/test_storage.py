from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from support.bundles import put
from unet_core.errors import ConfigError, NotFoundError, ResourceLimitError, StorageError
from unet_core.io import storage


def test_write_read_list(store):
    put(storage.join(store, "a/x.bin"), b"x" * 10)
    put(storage.join(store, "a/deeper/y.bin"), b"yy")
    put(storage.join(store, "b.bin"), b"")
    entries = storage.list_files(store)
    names = [e.uri[len(store):] for e in entries]
    assert names == ["/a/deeper/y.bin", "/a/x.bin", "/b.bin"]
    assert [e.size for e in entries] == [2, 10, 0]
    assert storage.read_bytes(storage.join(store, "a/x.bin")) == b"x" * 10
    assert storage.read_range(storage.join(store, "a/x.bin"), 8, 100) == b"xx"
    assert storage.exists(storage.join(store, "b.bin"))
    assert not storage.exists(storage.join(store, "c.bin"))
    # A single object lists itself.
    assert [e.uri for e in storage.list_files(storage.join(store, "b.bin"))] == [storage.join(store, "b.bin")]


def test_overwrite_is_atomic_and_leaves_no_temporaries(store):
    uri = storage.join(store, "obj.bin")
    put(uri, b"first")
    put(uri, b"second")
    assert storage.read_bytes(uri) == b"second"
    assert [e.uri for e in storage.list_files(store)] == [uri]
    if not storage.is_s3(store):
        assert os.listdir(store) == ["obj.bin"]


def test_missing_object_and_prefix(store):
    with pytest.raises(NotFoundError, match=r"nope\.bin: object not found"):
        storage.read_bytes(storage.join(store, "nope.bin"))
    with pytest.raises(NotFoundError, match="no such object or prefix"):
        storage.list_files(storage.join(store, "nowhere/"))
    with pytest.raises(NotFoundError, match="no such object"):
        storage.stat(storage.join(store, "nope.bin"))
    storage.delete(storage.join(store, "nope.bin"))  # already absent: nothing to do


def test_size_limit_refuses_before_reading(store):
    uri = put(storage.join(store, "big.bin"), b"0" * 1000)
    with pytest.raises(ResourceLimitError, match=r"big\.bin: 1000 bytes exceeds the per-file limit of 999"):
        storage.read_bytes(uri, max_bytes=999)


def test_bad_uris():
    with pytest.raises(ConfigError, match="unsupported URI scheme"):
        storage.resolve("gs://bucket/key")
    with pytest.raises(ConfigError, match="not a valid s3:// URI"):
        storage.resolve("s3://")


def test_file_uri(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"abc")
    assert storage.read_bytes(f"file://{tmp_path}/f.bin") == b"abc"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto(port: int, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def test_forbidden_object_names_it_and_says_what_to_check(monkeypatch):
    """A real 403: moto enforces authentication after its first two actions, and our key is not
    an IAM user there."""
    import boto3

    port = _free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="2")
    proc = _start_moto(port, env)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNUSER00000")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret-value")
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="locked")
        s3.put_object(Bucket="locked", Key="scan.dcm", Body=b"x")
        storage._s3_filesystem.cache_clear()
        with pytest.raises(StorageError, match=r"s3://locked/scan\.dcm: access denied \(read\); check the credentials") as info:
            storage.read_bytes("s3://locked/scan.dcm")
        assert "not-a-real-secret-value" not in str(info.value)
    finally:
        proc.kill()
        storage._s3_filesystem.cache_clear()


def test_transient_outage_is_retried(monkeypatch, s3_bucket, s3_server):
    """The endpoint refuses every connection when the write starts and recovers a second later;
    then it fails a third of all connections. Both are retried to success."""
    import threading

    from support.faultproxy import FaultProxy

    target = int(s3_server.rsplit(":", 1)[1])
    with FaultProxy(target, seed=1) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        storage._s3_filesystem.cache_clear()
        try:
            proxy.down = True
            timer = threading.Timer(1.0, lambda: setattr(proxy, "down", False))
            timer.start()
            storage.write_bytes(f"s3://{s3_bucket}/back.bin", b"made it")
            timer.join()
            assert proxy.failed >= 1
            proxy.fail_ratio = 0.33
            for i in range(10):
                storage.write_bytes(f"s3://{s3_bucket}/flaky-{i}.bin", bytes([i]) * 100)
            assert [storage.read_bytes(f"s3://{s3_bucket}/flaky-{i}.bin") for i in range(10)] == [
                bytes([i]) * 100 for i in range(10)
            ]
            assert storage.read_bytes(f"s3://{s3_bucket}/back.bin") == b"made it"
            assert proxy.failed > 3
        finally:
            storage._s3_filesystem.cache_clear()


def test_persistent_outage_becomes_a_storage_error(monkeypatch, s3_bucket, s3_server):
    from support.faultproxy import FaultProxy

    target = int(s3_server.rsplit(":", 1)[1])
    monkeypatch.setattr(storage, "RETRY_ATTEMPTS", 2)
    with FaultProxy(target) as proxy:
        proxy.down = True
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        storage._s3_filesystem.cache_clear()
        try:
            with pytest.raises(StorageError, match=rf"s3://{s3_bucket}/x.bin: read failed"):
                storage.read_bytes(f"s3://{s3_bucket}/x.bin")
        finally:
            storage._s3_filesystem.cache_clear()


@pytest.mark.parametrize("name", ["mask.nii.gz", "export.zip", "table.parquet", "x.bz2"])
def test_bytes_are_stored_as_given_whatever_the_name(store, name):
    """pyarrow would gzip a *.gz stream on its own; stored bytes must be exactly ours."""
    data = os.urandom(5000)
    uri = put(storage.join(store, name), data)
    assert storage.read_bytes(uri) == data
    assert storage.list_files(uri)[0].size == 5000


@pytest.mark.e2e
def test_a_refused_output_fails_the_job_at_once_with_the_storage_exit_status(tmp_path, s3_server):
    """Before reading anything, a job writes and removes a probe under its output: a missing bucket
    (or a key without write permission) ends the job with exit status 5 and a message naming the
    probe key and what to check, without scanning the archive."""
    from support.jobrun import job_env, run_unet

    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "a.dcm").write_bytes(b"not read")
    rc, out = run_unet("segment", "--input", str(tmp_path / "archive"), "--model", str(tmp_path / "nobundle"),
                       "--output", "s3://no-such-bucket-here/out", env=job_env())
    assert rc == 2 and "not a model bundle" in out  # the bundle is checked first: a usage error
    from unet_core.bundle import BundleInfo
    from unet_core.config import PreprocessConfig

    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "bundle.json").write_text(BundleInfo(preprocess=PreprocessConfig()).to_json())
    rc, out = run_unet("segment", "--input", str(tmp_path / "archive"), "--model", str(tmp_path / "bundle"),
                       "--output", "s3://no-such-bucket-here/out", env=job_env())
    assert rc == 5, out
    assert "s3://no-such-bucket-here/out: the output cannot be written" in out and ".tmp-probe-" in out
    assert "bucket not found" in out and "planning:" not in out


def test_local_outputs_follow_the_umask_or_are_private(tmp_path, monkeypatch):
    """Written atomically either way: 0644 under the usual 022 (a team on a shared disk opens the
    report), 0600 with --private-outputs (UNET_PRIVATE_OUTPUTS=1 in every worker)."""
    import stat as st

    monkeypatch.setattr(storage, "_UMASK", 0o022)
    storage.write_bytes(str(tmp_path / "shared.html"), b"x")
    assert st.S_IMODE(os.stat(tmp_path / "shared.html").st_mode) == 0o644
    monkeypatch.setenv(storage.PRIVATE_OUTPUTS_ENV, "1")
    storage.write_bytes(str(tmp_path / "private.html"), b"x")
    assert st.S_IMODE(os.stat(tmp_path / "private.html").st_mode) == 0o600
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def _s3_error(code: str, message: str = "") -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
            "</Error>").encode()


# (status, S3 error code, what it must become, requests the store may receive for one call). The
# key holds "500" and the messages "timeout" and "not found": words that once decided.
@pytest.mark.parametrize("status, code, expected, received", [
    (503, "SlowDown", StorageError, "all"),
    (500, "InternalError", StorageError, "all"),
    (400, "InvalidRequest", StorageError, 1),
    (403, "AccessDenied", StorageError, 1),
    (404, "NoSuchKey", NotFoundError, 1),
])
def test_retries_follow_the_stores_codes_and_each_attempt_is_one_request(status, code, expected, received,
                                                                         monkeypatch, s3_bucket, s3_server):
    """A store that keeps answering one error, in front of moto (a counting proxy): pyarrow's and
    botocore's own retries are off, so one call is at most our attempts, and only a throttle or a
    5xx is retried; a 400 is neither transient nor "not found", however the key is named."""
    from support.throttle import ThrottlingProxy
    from unet_core.io import listing

    monkeypatch.setattr(storage, "RETRY_ATTEMPTS", 3)
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    key = f"s3://{s3_bucket}/Series500/timeout-not-found.dcm"
    with ThrottlingProxy(int(s3_server.rsplit(":", 1)[1]), every=1, refuse_status=status,
                         refuse_body=_s3_error(code, "Request timeout 500: resource not found")) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        storage._s3_filesystem.cache_clear()
        listing._s3_client.cache_clear()
        try:
            prefix = key.rsplit("/", 1)[0]
            for target, call in ((key, lambda: storage.read_bytes(key)),  # pyarrow
                                 (prefix, lambda: list(listing.iter_objects(prefix)))):  # botocore
                path = "/" + target[len("s3://"):]
                before = proxy.paths.count(path)
                with pytest.raises(StorageError) as info:
                    call()
                assert type(info.value) is expected, info.value
                # Requests for this object (botocore may also ask for the bucket's region on a 400).
                assert proxy.paths.count(path) - before == (3 if received == "all" else received)
                if expected is StorageError:
                    assert "not found" not in str(info.value)
        finally:
            storage._s3_filesystem.cache_clear()
            listing._s3_client.cache_clear()


def test_a_code_is_read_from_the_library_never_from_the_key():
    """pyarrow's S3 errors carry the AWS error name in a fixed form; the key they quote is not a
    code, even when it looks like one."""
    key = "s3://b/AWS Error SLOW_DOWN during GetObject operation/x.dcm"
    fake = OSError(f"When reading information for key '{key[len('s3://b/'):]}' in bucket 'b': AWS Error "
                   "UNKNOWN (HTTP status 400) during HeadObject operation: No response body.")
    assert storage.diagnose(fake, key) == storage.Diagnosis(storage.Failure.OTHER, "UNKNOWN", 400)
    assert storage.diagnose(OSError("AWS Error SLOW_DOWN during PutObject operation: 500"), "s3://b/k").failure \
        is storage.Failure.TRANSIENT
    assert storage.diagnose(ConnectionRefusedError(111, "refused")).failure is storage.Failure.TRANSIENT
    assert storage.diagnose(OSError("connection timeout 500")).failure is storage.Failure.OTHER


def test_a_store_that_refuses_deletes_is_not_read_as_already_deleted(monkeypatch, s3_bucket, s3_server):
    from support.throttle import ThrottlingProxy

    key = f"s3://{s3_bucket}/kept.bin"
    put(key, b"x")
    with ThrottlingProxy(int(s3_server.rsplit(":", 1)[1]), every=1, refuse_status=403,
                         refuse_body=_s3_error("AccessDenied")) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        storage._s3_filesystem.cache_clear()
        try:
            with pytest.raises(StorageError, match="access denied") as info:
                storage.delete(key)
            assert not isinstance(info.value, NotFoundError)
        finally:
            monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
            storage._s3_filesystem.cache_clear()
    assert storage.read_bytes(key) == b"x"
