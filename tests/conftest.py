"""Shared fixtures: a real S3 endpoint (moto's server on 127.0.0.1), storage roots, one local Ray,
the phantom training set and a trained bundle. Helpers live in tests/support/ (import them from
there, never from this file).

Every storage test runs against both a local directory and the S3 endpoint (`store` fixture).

Tiers (pyproject.toml, Makefile): `make test` runs what is neither `e2e` nor `slow`;
`make test-e2e` the `e2e` tests (subprocess CLIs, Ray heads, wheels, the demo, the bench dry run)
and the fuzzer at more cases; `make test-slow` the `slow` ones and the fuzzer at thousands. The
Hypothesis profile comes from HYPOTHESIS_PROFILE (default, e2e, slow).
"""
from __future__ import annotations

import os
import uuid

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest
from hypothesis import settings

from support import orthanc
from support.bundles import SMALL_MODEL, analytic_bundle

# The test PACS's credentials (tests/support/orthanc.py: not a secret), set before the session's
# Ray starts so that its workers have them, as a deployment sets DICOMWEB_* on its nodes.
os.environ.setdefault("DICOMWEB_USER", orthanc.USER)
os.environ.setdefault("DICOMWEB_PASSWORD", orthanc.PASSWORD)

settings.register_profile("default", max_examples=30, derandomize=True, database=None)
settings.register_profile("e2e", max_examples=300, derandomize=True, database=None)
settings.register_profile("slow", max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# The e2e and slow tiers' longest files, longest first (measured on 2 cores: about 370 s for
# test_tracking_train.py down to 75 s for test_local_ray.py; test_faults.py is the slow tier's
# longest). pytest-xdist hands whole files to its workers in collection order (Makefile: `--dist
# loadfile --no-loadscope-reorder`), so these start first and the short files fill in at the end;
# in alphabetical order a long file started last and ran alone for minutes. The order changes no
# result: each file's own fixtures and order are kept.
LONGEST_FIRST = (
    "test_faults.py", "test_train_elastic_cluster.py", "test_faults_training.py", "test_fuzz.py",
    "test_bombs_memory.py",
    "test_tracking_train.py", "test_run_experience.py", "test_train.py", "test_train_repeat.py",
    "test_bench_quality.py", "test_dataset_to_seg_e2e.py", "test_bench_gpu.py", "test_segment_incremental.py",
    "test_demo.py", "test_dicomweb.py", "test_testdata_archive.py", "test_submit.py", "test_local_ray.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on a free loopback port; the AWS variables point at it for the session.
    Ray instances started later inherit them."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION")}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing-key-id", AWS_SECRET_ACCESS_KEY="testing-secret-key",
        AWS_ENDPOINT_URL=endpoint, AWS_REGION="us-east-1",
    )
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server) -> str:
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> str:
    """A writable root URI: a local folder, or a fresh bucket on the S3 server."""
    if request.param == "local":
        return str(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/root"


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One local Ray instance for the session, started after the S3 variables are set so that
    its workers inherit them. 3 logical CPUs: two training workers plus Ray Data."""
    import ray

    if not ray.is_initialized():
        # "local": a new instance of the session's own, never a `ray start --head` found on the machine
        # (with one there, ray.init() would attach to it and refuse num_cpus), as jobs/runtime.py does
        ray.init(address="local", num_cpus=3, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def training_set(s3_server, tmp_path_factory) -> str:
    """Ten labelled phantom cases (64 x 64 x 16 NIfTI) in S3."""
    import boto3

    from unet_core.synthetic import write_training_set

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="training-set")
    write_training_set("s3://training-set/raw", 10, size=64, n_slices=16, seed=0)
    return "s3://training-set/raw"


@pytest.fixture(scope="session")
def work_bucket(s3_server) -> str:
    import boto3

    name = f"work-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def prepared(training_set, ray_local, work_bucket) -> str:
    from jobs import prepare

    out = f"s3://{work_bucket}/prepared"
    rc = prepare.main(["--images", f"{training_set}/images", "--masks", f"{training_set}/masks", "--output", out,
                       "--input-size", "64", "--val-fraction", "0.2", "--seed", "3", "--foreground-labels", "1"])
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def trained_bundle(prepared, work_bucket) -> str:
    """A bundle trained by `unet train` with 2 workers on the phantom's target organ (in S3)."""
    from jobs import train

    output = f"s3://{work_bucket}/models/phantom"
    assert train.main(["--data", prepared, "--output", output, "--workers", "2", "--epochs", "30", *SMALL_MODEL]) == 0
    return output


@pytest.fixture(scope="session")
def phantom_bundle(work_bucket) -> str:
    """A bundle (in S3) that segments the phantom's target organ by its intensity band, with fixed
    weights: the pipeline's tests use it; `trained_bundle` is for the tests of training (e2e)."""
    return analytic_bundle(f"s3://{work_bucket}/models/analytic")


@pytest.fixture(scope="session")
def mlflow_tracking(tmp_path_factory):
    """A real `mlflow server` (SQLite store, served artifacts) on a loopback port for the session;
    skipped where none can run (tests/support/mlflow_server.py), failed under CI."""
    from support import mlflow_server

    reason = mlflow_server.skip_or_fail_reason()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with mlflow_server.MlflowServer(str(tmp_path_factory.mktemp("mlflow"))) as server:
        yield server


@pytest.fixture(scope="session")
def orthanc_binary():
    """Orthanc and its DICOMweb plugin, installed if they can be (root with apt-get); else a skip
    saying why. `.ci/run` installs them, so CI never skips."""
    why = orthanc.ensure_installed()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
