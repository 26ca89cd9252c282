"""`unet train` and `unet tune` tracked in a real `mlflow server` on loopback: what a 2-epoch run
logs and registers, a resumed run continuing its MLflow run, a server that dies mid-training, and
a search of 4 trials with ASHA as one parent run with a child per trial."""
from __future__ import annotations

import json
import os
import threading
import time

import pyarrow.parquet as pq
import pytest

from jobs import train
from support import mlflow_server
from support.bundles import SMALL_MODEL as SMALL
from support.jobrun import job_env, start_unet
from unet_core.bundle import bundle_identity

pytestmark = pytest.mark.e2e


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _runs(uri, experiment):
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_a_two_epoch_training_logs_its_run_and_registers_version_1(prepared, mlflow_tracking, tmp_path):
    uri, output = mlflow_tracking.uri, str(tmp_path / "model")
    assert train.main(["--data", prepared, "--output", output, "--workers", "1", "--epochs", "2", *SMALL,
                       "--tracking-uri", uri, "--experiment", "tracked", "--register-model", "phantom-organ"]) == 0
    (run,) = _runs(uri, "tracked")
    params = run.data.params
    assert params["option.learning_rate"] == "0.001" and params["option.epochs"] == "2"
    assert params["plan.input_size"] == "64" and "plan.recipe" in params and "steps.steps_per_epoch" in params
    assert run.data.tags["unet.workers"] == "1" and run.data.tags["unet.fingerprint_digest"]
    assert run.info.status == "FINISHED"
    client = _client(uri)
    history = client.get_metric_history(run.info.run_id, "val_dice")
    assert [m.step for m in history] == [0, 1]
    assert {m.key for m in history} == {"val_dice"}
    for key in ("train_loss", "learning_rate", "slices_per_second", "val_dice_hard"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 2
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "bundle"} <= files
    bundle_files = {os.path.basename(f.path) for f in client.list_artifacts(run.info.run_id, "bundle")}
    assert {"bundle.json", "model.keras", "report.html", "curves.png"} <= bundle_files
    version = client.get_model_version("phantom-organ", "1")
    assert version.run_id == run.info.run_id
    assert version.tags["unet.bundle_identity"] == bundle_identity(output)


def test_a_resumed_training_continues_its_mlflow_run(prepared, mlflow_tracking, tmp_path):
    uri, output = mlflow_tracking.uri, str(tmp_path / "model")
    args = ["--data", prepared, "--output", output, "--workers", "1", *SMALL, "--tracking-uri", uri,
            "--experiment", "resumed"]
    assert train.main([*args, "--epochs", "1"]) == 0
    assert train.main([*args, "--epochs", "2", "--resume"]) == 0
    (run,) = _runs(uri, "resumed")
    assert [m.step for m in _client(uri).get_metric_history(run.info.run_id, "val_dice")] == [0, 1]
    assert run.data.params["option.epochs"] == "1"  # a run's params are those it started with


def test_a_server_stopped_during_training_costs_one_warning_and_the_bundle_is_written(prepared, mlflow_tracking,
                                                                                    tmp_path):
    # a server of its own (this test stops it); the session's fixture says whether one can run here
    with mlflow_server.MlflowServer(str(tmp_path / "mlflow")) as server:
        output = str(tmp_path / "model")
        proc = start_unet("train", "--data", prepared, "--output", output, "--workers", "1", "--epochs", "3",
                          *SMALL, "--tracking-uri", server.uri, "--experiment", "dying", env=job_env())

        def stop_after_the_first_epoch():
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    runs = _runs(server.uri, "dying")
                    if runs and _client(server.uri).get_metric_history(runs[0].info.run_id, "val_dice"):
                        server.stop()
                        return
                except Exception:  # noqa: BLE001 - the server is still starting the run
                    pass
                time.sleep(0.5)

        stopper = threading.Thread(target=stop_after_the_first_epoch)
        stopper.start()
        out, _ = proc.communicate(timeout=1200)
        stopper.join()
    assert proc.returncode == 0, out
    assert os.path.exists(os.path.join(output, "bundle.json"))
    warnings = [line for line in out.splitlines() if line.startswith("tracking lost:")]
    assert len(warnings) == 1, out
    assert "tracking was lost" in out and "the bundle is complete" in out
    assert "Traceback" not in out


def test_a_search_of_four_trials_with_asha_beside_another_ray_instance(prepared, mlflow_tracking, tmp_path, ray_local):
    """ASHA, in a local Ray instance of the search's own while the session's runs beside it
    (`ray_local`): a trial ASHA stops leaves no placement group behind (jobs/tune.py `_start_ray`,
    docs/design.md "Search"), or the later trials would wait for its CPUs and the search never end."""
    space = tmp_path / "space.yaml"
    space.write_text("learning-rate: {loguniform: [3.0e-4, 3.0e-3]}\nbase-filters: {choice: [4, 8]}\n")
    output = str(tmp_path / "search")
    proc = start_unet("tune", "--data", prepared, "--output", output, "--space", str(space), "--trials", "4",
                      "--scheduler", "asha", "--max-concurrent", "2", "--workers", "1", "--epochs", "3",
                      "--depth", "3", "--batch-size", "4", "--loss", "bce_dice", "--batch-norm", "--dropout", "0.1",
                      "--tracking-uri", mlflow_tracking.uri, "--experiment", "search", env=job_env())
    out, _ = proc.communicate(timeout=3000)
    assert proc.returncode == 0, out
    table = pq.ParquetFile(os.path.join(output, "trials.parquet")).read().to_pylist()
    assert len(table) == 4
    assert {r["status"] for r in table} <= {"finished", "stopped"}
    assert all(1 <= r["epochs"] <= 3 and r["best_val_dice"] is not None for r in table)
    assert {r["params"]["base_filters"] for r in table} <= {4, 8}
    best = max((r for r in table if r["status"] == "finished"), key=lambda r: r["best_val_dice"])
    info = json.loads(open(os.path.join(output, "best", "bundle.json")).read())
    assert info["model"]["base_filters"] == best["params"]["base_filters"]
    assert os.path.exists(os.path.join(output, "report.html"))
    runs = _runs(mlflow_tracking.uri, "search")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
