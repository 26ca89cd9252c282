"""Faults survived, with real processes and real kills (marked slow; `make test-all` runs them).

- a Ray worker (the predictor actor) killed in the middle of `unet segment`;
- the S3 endpoint failing for a while, and one object failing for good;
- `unet segment` interrupted with SIGINT halfway and run again.
Training's faults are in test_faults_training.py. Each segment run is checked for the same things: every volume exactly once in every output, no
temporary or partial object, masks equal to those of an undisturbed run.
"""
from __future__ import annotations

import gzip
import io
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

from support.bundles import tiny_bundle
from support.jobrun import finish, job_env, session_processes, start_unet, wait_for
from unet_core.io import storage
from unet_core.segmentation.tables import read_volume_table
from unet_core.synthetic import Phantom, SeriesSpec, dicom_series, nifti_case

pytestmark = pytest.mark.slow
N_SERIES, N_NIFTI = 8, 2


_env, _unet, _finish = job_env, start_unet, finish


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("faults") / "archive"
    for s in range(N_SERIES):
        spec = SeriesSpec(orientation=["axial", "coronal"][s % 2], rows=64, columns=64, n_slices=16)
        for name, data in dicom_series(Phantom.random(70 + s), spec, seed=70 + s)[0]:
            storage.write_bytes(f"{root}/series{s:02d}/{name}", data)
    for n in range(N_NIFTI):
        image, _ = nifti_case(Phantom.random(90 + n), np.diag([6.0, 6.0, 8.0, 1.0]), (64, 64, 16), seed=90 + n)
        storage.write_bytes(f"{root}/nifti/case{n}.nii.gz", image)
    return str(root)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> str:
    """An untrained 8-filter bundle: these tests are about the pipeline, not the model."""


    return tiny_bundle(str(tmp_path_factory.mktemp("faults") / "bundle"), size=64, base_filters=8, depth=3,
                       name="faults")


@pytest.fixture(scope="module")
def reference(archive, bundle, tmp_path_factory) -> dict[str, np.ndarray]:
    """Masks of an undisturbed run, by source below the archive root."""
    out = str(tmp_path_factory.mktemp("faults") / "reference")
    rc, log = _finish(_unet("segment", "--input", archive, "--model", bundle, "--output", out, "--batch-size", "4"))
    assert rc == 0, log[-3000:]
    return _check_complete(out)


def _mask(uri: str) -> np.ndarray:
    return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(storage.read_bytes(uri))).dataobj)


def _check_complete(out: str, reference: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Every volume once in every output, nothing partial; masks equal the reference's."""
    rows = read_volume_table(out)
    ids = [r["volume_id"] for r in rows]
    assert len(ids) == len(set(ids)) == N_SERIES + N_NIFTI, ids
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    names = {folder: sorted(storage.basename(e.uri) for e in storage.list_files(f"{out}/{folder}"))
             for folder in ("masks", "slices", "records/ok")}
    assert names["masks"] == sorted(f"{i}.nii.gz" for i in ids)
    assert names["slices"] == sorted(f"{i}.parquet" for i in ids)
    assert names["records/ok"] == sorted(f"{i}.parquet" for i in ids)
    leftovers = [p for p in Path(out).rglob("*") if p.name.startswith(".tmp-")] if not storage.is_s3(out) else []
    assert not leftovers, leftovers
    masks = {}
    for r in rows:
        mask = masks[_key(r)] = _mask(r["mask_uri"])
        slices = pq.read_table(io.BytesIO(storage.read_bytes(r["slices_uri"])))
        assert slices.num_rows == mask.shape[2]
        if reference is not None:
            np.testing.assert_array_equal(mask, reference[_key(r)])
    return masks


def _key(row: dict) -> str:
    """A volume's source below the archive root: the same volume wherever the archive is copied."""
    return row["source"].split("/archive", 1)[1]


def _done(out: str) -> int:
    folder = Path(out) / "records" / "ok"
    return len(list(folder.glob("*.parquet"))) if folder.is_dir() else 0


def test_segment_survives_a_killed_predictor_worker(archive, bundle, reference, tmp_path):
    out = str(tmp_path / "out")
    proc = _unet("segment", "--input", archive, "--model", bundle, "--output", out, "--batch-size", "4")
    wait_for(lambda: _done(out) >= 1, 300, "the first volume", proc)
    (actor,) = wait_for(lambda: session_processes("PredictorServer", proc.pid), 60, "the predictor actor", proc)
    assert _done(out) < N_SERIES + N_NIFTI, "the run finished before the kill; make the archive larger"
    actor.kill()
    rc, log = _finish(proc)
    assert rc == 0, log[-4000:]
    _check_complete(out, reference)


def test_sigint_halfway_then_rerun_completes_with_identical_masks(archive, bundle, reference, tmp_path):
    out = str(tmp_path / "out")
    # A test run started in the background by a shell without job control (`cmd &`) inherits
    # SIGINT ignored, and so would the job: a user's terminal never does. Give the job the default.
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _sigint_then_rerun(archive, bundle, reference, out)
    finally:
        signal.signal(signal.SIGINT, previous)


def _sigint_then_rerun(archive: str, bundle: str, reference, out: str) -> None:
    # One volume at a time, so that the interrupt lands halfway: with every volume in flight at
    # once, the other eight could finish within the 0.2 s it takes to see the second.
    proc = _unet("segment", "--input", archive, "--model", bundle, "--output", out, "--batch-size", "4",
                 "--decode-concurrency", "1")
    wait_for(lambda: _done(out) >= 2, 300, "two volumes", proc)
    assert _done(out) < N_SERIES + N_NIFTI, "the run finished before the interrupt; make the archive larger"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
    rc, log = _finish(proc, timeout=120)
    assert rc == 130, log[-3000:]
    assert "re-run the same command to resume" in log
    first = _done(out)
    assert 2 <= first < N_SERIES + N_NIFTI
    rc, log = _finish(_unet("segment", "--input", archive, "--model", bundle, "--output", out, "--batch-size", "4"))
    assert rc == 0, log[-3000:]
    assert f"{first} already complete" in log
    _check_complete(out, reference)


def test_s3_outage_is_retried_and_a_persistent_failure_is_one_volume_error(archive, bundle, reference, s3_server,
                                                                           work_bucket):
    """Through a loopback proxy: the whole endpoint down for 3 s mid-run (retried, all ok), and
    one object's reads failing for good (that volume is an error row; the rest complete)."""
    from support.faultproxy import FaultProxy

    root = f"s3://{work_bucket}/outage"
    for e in storage.list_files(archive):
        storage.write_bytes(root + "/archive" + e.uri[len(archive):], storage.read_bytes(e.uri))
    for e in storage.list_files(bundle):
        storage.write_bytes(root + "/bundle" + e.uri[len(bundle):], storage.read_bytes(e.uri))
    port = int(s3_server.rsplit(":", 1)[1])
    poisoned = "outage/archive/nifti/case1.nii.gz"
    with FaultProxy(port, poison=poisoned.encode()) as proxy:
        env = _env(AWS_ENDPOINT_URL=proxy.endpoint, UNET_STORAGE_RETRIES="8")
        out = f"{root}/out"
        proc = _unet("segment", "--input", f"{root}/archive", "--model", f"{root}/bundle", "--output", out,
                     "--batch-size", "4", env=env)
        wait_for(lambda: _count(out) >= 1, 300, "the first volume", proc)
        proxy.down = True
        time.sleep(3.0)
        proxy.down = False
        rc, log = _finish(proc)
        assert proxy.failed > 0 and proxy.poisoned > 0
    assert rc == 3, log[-4000:]  # the poisoned volume failed; every other one is written
    rows = read_volume_table(out)
    (bad,) = [r for r in rows if r["status"] != "ok"]
    assert bad["source"].endswith("case1.nii.gz") and bad["error_type"] == "storage", bad
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == N_SERIES + N_NIFTI - 1
    for r in ok:
        np.testing.assert_array_equal(_mask(r["mask_uri"]), reference[_key(r)])


def _count(out: str) -> int:
    try:
        return len(storage.list_files(f"{out}/records/ok"))
    except Exception:  # noqa: BLE001 - not there yet, or the endpoint is down on purpose
        return 0


# ---- a lost node: several `ray start` nodes on loopback, one killed mid-run ---------------------


def test_segment_on_three_nodes_survives_losing_one_and_says_it_in_one_line(archive, bundle, reference, tmp_path):
    from support.raycluster import node_running, one_lost_node_line, ray_head, worker_nodes

    out = str(tmp_path / "out")
    token = secrets.token_hex(32)  # token authentication, as a cluster runs
    with ray_head(token=token, num_cpus=2) as head, worker_nodes(head, 2, num_cpus=2) as nodes:
        proc = _unet("segment", "--input", archive, "--model", bundle, "--output", out, "--batch-size", "4",
                     "--address", head.gcs, "--decode-concurrency", "1",
                     env=_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
        victim = wait_for(lambda: node_running(nodes, "ray::"), 300, "a task on a worker node", proc)
        assert _done(out) < N_SERIES + N_NIFTI, "the run finished before the kill; make the archive larger"
        victim.kill()
        rc, log = _finish(proc)
    assert rc == 0, log[-4000:]
    one_lost_node_line(log)
    _check_complete(out, reference)  # every volume exactly once, masks as undisturbed


def _published_raylet_notice(temp_dir: str) -> bool:
    """Whether a node's dashboard agent logged the "Raylet is terminated" notice it publishes to drivers."""
    for path in Path(temp_dir).glob("session_*/logs/dashboard_agent*.log"):
        if "Raylet is terminated" in path.read_text(errors="replace"):
            return True
    return False


@pytest.mark.parametrize("verbose", [False], ids=["quiet"])  # -v: the next test (see docs/reliability.md)
def test_a_crashed_raylets_log_tail_is_held_back_in_quiet_mode_and_shown_with_v(archive, bundle, reference, tmp_path,
                                                                                verbose):
    """Only the raylet of a node dies: its agents publish "Raylet is terminated ... Last 20 lines of
    the Raylet logs" to the driver. Quiet: the one `lost node` line; -v: Ray's notice too."""
    from support.raycluster import node_running, one_lost_node_line, ray_head, worker_nodes

    out = str(tmp_path / "out")
    token = secrets.token_hex(32)
    with ray_head(token=token, num_cpus=2) as head, worker_nodes(head, 2, num_cpus=2) as nodes:
        proc = _unet("segment", "--input", archive, "--model", bundle, "--output", out, "--batch-size", "4",
                     "--address", head.gcs, "--decode-concurrency", "1", *(["-v"] if verbose else []),
                     env=_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
        victim = wait_for(lambda: node_running(nodes, "ray::"), 300, "a task on a worker node", proc)
        assert _done(out) < N_SERIES + N_NIFTI, "the run finished before the kill; make the archive larger"
        victim.kill_raylet()
        # The node's dashboard agent notices and publishes the notice (its own log says so); the job
        # must still be running then, or its output proves nothing either way.
        wait_for(lambda: _published_raylet_notice(head.temp_dir), 120, "the dead raylet's notice", proc)
        assert proc.poll() is None, "the run ended before the notice was published; make the archive larger"
        rc, log = _finish(proc)
    assert rc == 0, log[-4000:]
    _check_complete(out, reference)
    if verbose:
        assert "Raylet is terminated" in log and "lines of the Raylet logs" in log, log[-4000:]
    else:
        one_lost_node_line(log)


_DRIVER = """
import sys, time
from jobs.output import configure
from jobs.runtime import init_ray
configure({verbose})
init_ray(sys.argv[1], verbose={verbose})
print("driver up", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_driver_attached_by_init_ray_shows_a_dead_raylets_notice_only_with_v(tmp_path):
    """The jobs' own attachment (jobs/runtime.py init_ray: log_to_driver, the quieting, NodeWatch),
    two drivers on one loopback cluster, one quiet and one -v, while a node's raylet dies."""
    from support.raycluster import ray_head, worker_nodes

    token = secrets.token_hex(32)
    with ray_head(token=token, num_cpus=1) as head, worker_nodes(head, 1, num_cpus=1) as nodes:
        env = {**_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token), "PYTHONPATH": str(Path(__file__).parents[1])}
        drivers = {v: subprocess.Popen([sys.executable, "-c", _DRIVER.format(verbose=v), head.gcs, "90"], env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                   for v in (False, True)}
        time.sleep(20)  # both attached (they say "driver up" first; read once they end)
        nodes[0].kill_raylet()
        wait_for(lambda: _published_raylet_notice(head.temp_dir), 60, "the dead raylet's notice")
        said = {v: d.communicate(timeout=300)[0] for v, d in drivers.items()}
    for v, out in said.items():
        assert "driver up" in out and out.count("lost node ") == 1, (v, out[-3000:])
    assert "Raylet is terminated" not in said[False] and "lines of the Raylet logs" not in said[False], said[False]
    assert "Raylet is terminated" in said[True] and "lines of the Raylet logs" in said[True], said[True][-3000:]
