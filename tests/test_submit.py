"""`unet submit` against a real Ray head on loopback (`ray start --head`) with token authentication:
a segment job over a tiny archive in S3 (moto) runs to SUCCEEDED with its outputs written; a job
that ends with failed volumes passes its exit status through; --no-wait / --status / --stop; no
token, a wrong token and an unreachable cluster each give one clear line and a non-zero exit."""
from __future__ import annotations

import gzip
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from jobs import submit
from jobs.exits import Exit
from support.bundles import tiny_bundle
from support.raycluster import free_ports, ray_head
from unet_core.io import read_volume, storage
from unet_core.segmentation.tables import read_volume_table

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
TOKEN = secrets.token_hex(16)


def unet_submit(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", "submit", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


def client_env(tmp_home: Path, token: str | None) -> dict[str, str]:
    """This shell: no token file in HOME, the token (if any) in RAY_AUTH_TOKEN, no RAY_AUTH_MODE."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_home)
    if token:
        env["RAY_AUTH_TOKEN"] = token
    return env


@pytest.fixture(scope="module")
def head(s3_server):
    """A token-protected head. Like a cluster with an IAM role, it holds the storage credentials
    itself; the S3 endpoint reaches the job only through `unet submit` forwarding AWS_ENDPOINT_URL."""
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    with ray_head(token=TOKEN, num_cpus=2, env=env) as h:
        yield h


@pytest.fixture(scope="module")
def tiny(s3_server, work_bucket):
    """Two small DICOM series and a NIfTI volume in S3, and an untrained 8-filter bundle."""

    from unet_core.synthetic import Phantom, SeriesSpec, dicom_series, nifti_case

    root = f"s3://{work_bucket}/submit-archive"
    for s, orientation in enumerate(["axial", "coronal"]):
        for name, data in dicom_series(Phantom.random(s), SeriesSpec(orientation=orientation, n_slices=8), seed=s)[0]:
            storage.write_bytes(f"{root}/series{s}/{name}", data)
    image, _ = nifti_case(Phantom.random(5), np.diag([4.0, 4.0, 6.0, 1.0]), (48, 48, 8), seed=5)
    storage.write_bytes(f"{root}/nifti/case5.nii.gz", image)
    bundle = tiny_bundle(f"s3://{work_bucket}/submit-bundle", size=64, base_filters=8, depth=3)
    return root, bundle


def _volumes(out: str) -> list[dict]:
    return read_volume_table(out)


def test_segment_job_runs_on_the_cluster_with_the_token(head, tiny, work_bucket, tmp_path):
    root, bundle = tiny
    out = f"s3://{work_bucket}/submit-out"
    r = unet_submit("--address", head.dashboard, "--", "segment", "--input", root, "--model", bundle,
                    "--output", out, "--batch-size", "4", env=client_env(tmp_path, TOKEN))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "SUCCEEDED" in r.stderr
    assert "segmented 3 volumes" in r.stdout  # the job's own log, streamed here
    assert TOKEN not in r.stdout + r.stderr
    rows = _volumes(out)
    assert sorted(r["status"] for r in rows) == ["ok"] * 3
    for row in rows:
        mask = nib.Nifti1Image.from_bytes(gzip.decompress(storage.read_bytes(row["mask_uri"])))
        source = read_volume(row["source"])  # a NIfTI object, or the prefix of one series
        assert mask.shape == source.shape
        np.testing.assert_allclose(mask.affine, source.affine, atol=1e-4)


def test_failed_volumes_pass_the_exit_status_through_no_wait_and_status(head, tiny, work_bucket, tmp_path):
    root, bundle = tiny
    storage.write_bytes(f"{root}-junk/broken.dcm", b"not a DICOM file at all" * 10)
    out = f"s3://{work_bucket}/submit-junk-out"
    env = client_env(tmp_path, TOKEN)
    r = unet_submit("--address", head.dashboard, "--no-wait", "--", "segment", "--input", f"{root}/series0",
                    f"{root}-junk", "--model", bundle, "--output", out, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    job_id = r.stdout.strip().splitlines()[-1]
    assert job_id.startswith("raysubmit_")
    deadline = time.monotonic() + 240
    while True:
        status = unet_submit("--address", head.dashboard, "--status", job_id, env=env)
        if "SUCCEEDED" in status.stdout or "FAILED" in status.stdout or time.monotonic() > deadline:
            break
        assert status.returncode == 0, status.stderr
        time.sleep(2)
    assert "FAILED" in status.stdout
    assert status.returncode == 3  # segment's "some volumes failed", from the job itself
    rows = {r["status"]: r for r in _volumes(out)}
    assert set(rows) == {"ok", "error"} and "broken.dcm" in rows["error"]["source"]
    logs = unet_submit("--address", head.dashboard, "--logs", job_id, env=env)
    assert logs.returncode == 0 and "1 ok, 1 failed" in logs.stdout


def test_stop(head, tiny, work_bucket, tmp_path):
    root, bundle = tiny
    env = client_env(tmp_path, TOKEN)
    r = unet_submit("--address", head.dashboard, "--no-wait", "--", "segment", "--input", root, "--model", bundle,
                    "--output", f"s3://{work_bucket}/submit-stopped", env=env)
    job_id = r.stdout.strip().splitlines()[-1]
    assert unet_submit("--address", head.dashboard, "--stop", job_id, env=env).returncode == 0
    deadline = time.monotonic() + 60
    while "STOPPED" not in (s := unet_submit("--address", head.dashboard, "--status", job_id, env=env)).stdout:
        assert time.monotonic() < deadline, s.stdout + s.stderr
        time.sleep(1)
    assert s.returncode == Exit.STOPPED


def test_without_the_token_says_what_to_do(head, tiny, tmp_path):
    root, bundle = tiny
    r = unet_submit("--address", head.dashboard, "--", "segment", "--input", root, "--model", bundle,
                    "--output", str(tmp_path / "never"), env=client_env(tmp_path, None))
    assert r.returncode == 2
    assert "requires an authentication token" in r.stderr and "RAY_AUTH_TOKEN" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "never").exists()


def test_a_wrong_token_is_rejected_clearly(head, tiny, tmp_path):
    root, bundle = tiny
    wrong = "0" * 32
    r = unet_submit("--address", head.dashboard, "--status", "raysubmit_nothing", env=client_env(tmp_path, wrong))
    assert r.returncode == 2 and "rejected the token from RAY_AUTH_TOKEN" in r.stderr
    assert wrong not in r.stderr + r.stdout and "Traceback" not in r.stderr


def test_unreachable_cluster_is_one_clear_line(tmp_path):
    (port,) = free_ports(1)
    r = unet_submit("--address", f"http://127.0.0.1:{port}", "--", "evaluate", "--pred", "a", "--truth", "b",
                    env=client_env(tmp_path, None), timeout=120)
    assert r.returncode == 2, r.stderr
    assert f"cannot reach the Ray Jobs API at http://127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr


def test_job_options_are_checked_before_anything_is_sent(tmp_path):
    (port,) = free_ports(1)  # nothing listens there: the check must fail first
    env = client_env(tmp_path, None)
    bad = unet_submit("--address", f"http://127.0.0.1:{port}", "--", "segment", "--input", "a", "--model", "m", "--output", "o",
                      "--bogus",
                      env=env, timeout=120)
    assert bad.returncode == 2 and "unrecognized arguments: --bogus" in bad.stderr
    assert "usage: unet submit -- segment" in bad.stderr
    nojob = unet_submit("--address", f"http://127.0.0.1:{port}", "--", "frobnicate", env=env, timeout=120)
    assert nojob.returncode == 2 and "'frobnicate' is not a job that can be submitted" in nojob.stderr


def test_runtime_env_ships_the_project_and_forwards_only_what_it_should(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.local:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-forward")
    monkeypatch.setenv("DICOMWEB_PASSWORD", "do-not-forward")
    args = submit.build_parser().parse_args(["--packages", "pinned", "--env", "MY_SETTING=1", "--", "train"])
    renv = submit.runtime_env(args)
    staged = Path(renv["working_dir"])
    assert (staged / "jobs" / "cli.py").is_file() and (staged / "pyproject.toml").is_file()
    assert not (staged / ".venv").exists() and not (staged / "tests").exists()
    assert renv["env_vars"]["AWS_ENDPOINT_URL"] == "http://minio.local:9000" and renv["env_vars"]["MY_SETTING"] == "1"
    assert "AWS_SECRET_ACCESS_KEY" not in renv["env_vars"] and "DICOMWEB_PASSWORD" not in renv["env_vars"]
    assert "do-not-forward" not in str(renv)
    pins = renv["pip"]["packages"]
    assert any(p.startswith("tensorflow==") for p in pins) and not any(p.startswith("ray") for p in pins)
    with pytest.raises(submit.ConfigError, match="not passed on"):
        submit.job_env(["RAY_AUTH_TOKEN=x"])
    assert submit.entrypoint(["segment", "--input", "s3://b/with space"]) == \
        "python -m jobs.cli segment --input 's3://b/with space'"


@pytest.mark.slow
def test_a_job_attaches_to_an_existing_cluster_with_address(head, tiny, work_bucket, tmp_path):
    """`--address HOST:PORT` runs the driver here and the work on the cluster (no Jobs API)."""
    root, bundle = tiny
    env = client_env(tmp_path, TOKEN)
    env["RAY_AUTH_MODE"] = "token"  # a driver joining a token cluster needs both (docs/design.md, fact 5)
    out = f"s3://{work_bucket}/attached-out"
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "segment", "--address", head.gcs, "--input", f"{root}/nifti",
                        "--model", bundle, "--output", out], cwd=ROOT, env=env, text=True, capture_output=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"attached to the Ray cluster at {head.gcs}" in r.stderr  # not a new local instance
    assert [row["status"] for row in _volumes(out)] == ["ok"]


# ---- an installed package ------------------------------------------------------------------------
def _venv(path: Path, deps_from: str) -> Path:
    """A fresh venv whose third-party packages are this environment's: a .pth file names this
    site-packages, whose own .pth files (this checkout's editable-install finder among them) are
    not processed, so `jobs` and `unet_core` are not importable there unless installed."""
    import site
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    site_dir = path / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    (site_dir / "_deps.pth").write_text(deps_from + "\n")
    assert sysconfig.get_paths()["purelib"] == deps_from or deps_from in site.getsitepackages()
    return path / "bin" / "python"


def _build_wheel(dest: Path) -> Path:
    """A wheel built from the repository's tracked sources (a copy, so the checkout stays clean)."""
    import shutil

    src = dest / "src"
    files = subprocess.run(["git", "ls-files", "pyproject.toml", "README.md", "LICENSE", "jobs", "unet_core"], cwd=ROOT,
                           text=True, capture_output=True, check=True).stdout.split()
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(dest / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (dest / "dist").glob("unet_ray-*.whl")
    return wheel


def test_an_installed_wheel_submits_exactly_its_own_packages(tiny, work_bucket, tmp_path):
    """`pip install unet_ray-*.whl` (not editable) into a fresh venv; `unet submit` from there ships
    the two packages found through the distribution's metadata (not site-packages) and the pins
    from its metadata, to a real token-protected head whose own Python cannot import this project
    at all: the segment job can only have run on the code that was shipped."""
    import sysconfig

    deps = sysconfig.get_paths()["purelib"]
    client = _venv(tmp_path / "client", deps)
    cluster = _venv(tmp_path / "cluster", deps)
    wheel = _build_wheel(tmp_path)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(client), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    no_project = subprocess.run([str(cluster), "-c", "import jobs"], capture_output=True, text=True, cwd=tmp_path)
    assert no_project.returncode != 0 and "No module named 'jobs'" in no_project.stderr

    env = {k: v for k, v in client_env(tmp_path, TOKEN).items() if k != "PYTHONPATH"}
    env["PATH"] = f"{client.parent}{os.pathsep}{env['PATH']}"
    shown = subprocess.run(
        [str(client), "-c", "import json; from jobs import submit; a = submit.build_parser().parse_args("
                            "['--packages', 'pinned', '--', 'segment']); print(json.dumps(submit.runtime_env(a)))"],
        cwd=tmp_path, env=env, text=True, capture_output=True, check=True)
    import json

    renv = json.loads(shown.stdout)
    site_packages = client.parent.parent / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    assert "working_dir" not in renv
    assert renv["py_modules"] == [str(site_packages / "jobs"), str(site_packages / "unet_core")]
    shipped = sum(f.stat().st_size for m in renv["py_modules"] for f in Path(m).rglob("*") if f.is_file())
    assert shipped < 10 * 2**20, shipped  # the project's own code, not TensorFlow
    pins = renv["pip"]["packages"]
    assert any(p.startswith("tensorflow==2.21") for p in pins) and any(p.startswith("highdicom") for p in pins)
    assert not any(p.startswith(("ray", "pytest", "moto")) for p in pins)  # no Ray, no extras

    root, bundle = tiny
    out = f"s3://{work_bucket}/installed-out"
    head_env = {k: v for k, v in os.environ.items()
                if k not in ("AWS_ENDPOINT_URL", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "PYTHONPATH")}
    with ray_head(token=TOKEN, num_cpus=2, env=head_env, python=str(cluster)) as h:
        r = subprocess.run([str(client.parent / "unet"), "submit", "--address", h.dashboard, "--", "segment",
                            "--input", f"{root}/nifti", "--model", bundle, "--output", out, "--assume-modality", "CT"],
                           cwd=tmp_path, env=env, text=True, capture_output=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "SUCCEEDED" in r.stderr + r.stdout
    assert [row["status"] for row in _volumes(out)] == ["ok"]


def test_a_checkout_uploads_only_its_code(head, tmp_path):
    """A .env, scans and reports lying in a checkout never reach the cluster: the package the head
    unpacked for the job holds the project's code and nothing else."""
    import shutil

    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "__pycache__",
                                                                   ".pytest_cache", ".ruff_cache", "demo-output",
                                                                   "dist", "build", ".hypothesis"))
    planted = {".env": b"AWS_SECRET_ACCESS_KEY=planted-secret", "scan.DCM": b"\0" * 128 + b"DICM",
               "jobs/IM00001": b"\0" * 128 + b"DICM", "report.html": b"<html>planted</html>",
               "unet_core/model.keras": b"planted model"}
    for name, data in planted.items():
        (checkout / name).write_bytes(data)
    r = unet_submit("--address", head.dashboard, "--working-dir", str(checkout), "--", "status",
                    str(tmp_path / "no-such-output"), env=client_env(tmp_path, TOKEN))
    assert r.returncode == Exit.USAGE, r.stdout[-2000:] + r.stderr[-2000:]  # the job ran (and found no output)
    packages = {p.parent.parent for p in Path(head.temp_dir).rglob("jobs/cli.py") if "runtime_resources" in str(p)}
    assert packages, "the head unpacked no package"
    for package in packages:
        shipped = {str(p.relative_to(package)) for p in package.rglob("*") if p.is_file()}
        assert {"pyproject.toml", "jobs/cli.py", "unet_core/__init__.py"} <= shipped
        assert not set(planted) & shipped and not any(s.startswith(("tests/", "docs/", "cluster/")) for s in shipped)
