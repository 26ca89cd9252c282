"""Tracking and the model registry against a real `mlflow server` (SQLite store, served artifacts)
on loopback: what a run logs, a version registered and fetched back checked, a server that is
down costing one warning. The training-level tests (a 2-epoch `unet train` logging its epochs,
`unet segment --model models:/...`, `unet tune`) build on these."""
from __future__ import annotations

import os
import time

import pytest

from support.bundles import tiny_bundle
from unet_core.bundle import bundle_identity
from unet_core.errors import ConfigError, InputError
from unet_core.registry import ModelRef, fetch
from unet_core.tracking import BUNDLE_ARTIFACT, Tracker, TrackingConfig

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(mlflow_tracking):
    return mlflow_tracking


def _client(server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)


def test_a_run_logs_params_metrics_and_a_bundle_and_registers_a_checked_version(server, tmp_path):
    bundle = tiny_bundle(str(tmp_path / "bundle"))
    warnings: list[str] = []
    tracker = Tracker.open(TrackingConfig(uri=server.uri, experiment="unet-test", run_name="r1",
                                          register_model="liver"), tags={"cluster.workers": "2"},
                           warn=warnings.append)
    tracker.log_params({"train": {"learning_rate": 0.001, "seed": 3}, "data": "s3://b/p", "window": None})
    for epoch, dice in enumerate([0.5, 0.75]):
        tracker.log_metrics({"val_dice": dice, "loss": 1 - dice, "note": "text is not a metric"}, epoch)
    tracker.log_folder(bundle, BUNDLE_ARTIFACT)
    identity = bundle_identity(bundle)
    assert tracker.register("liver", identity) == "1"
    tracker.close()
    assert warnings == [] and tracker.lost is None

    run = _client(server).get_run(tracker.run_id)
    assert run.info.run_name == "r1" and run.info.status == "FINISHED"
    assert run.data.params == {"train.learning_rate": "0.001", "train.seed": "3", "data": "s3://b/p", "window": "None"}
    assert run.data.tags["cluster.workers"] == "2"
    history = _client(server).get_metric_history(tracker.run_id, "val_dice")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.75)]

    got = fetch(ModelRef("liver", version="1"), server.uri, bundle_identity, cache_dir=str(tmp_path / "cache"))
    assert (got.version, got.run_id, got.identity) == ("1", tracker.run_id, identity)
    assert bundle_identity(got.path) == identity
    assert fetch(ModelRef("liver", version="1"), server.uri, bundle_identity, cache_dir=str(tmp_path / "cache")).path == got.path

    # A cached file changed underneath is noticed and fetched again.
    with open(os.path.join(got.path, "bundle.json"), "a") as f:
        f.write(" ")
    again = fetch(ModelRef("liver", version="1"), server.uri, bundle_identity, cache_dir=str(tmp_path / "cache"))
    assert bundle_identity(again.path) == identity

    # An alias names the same version.
    _client(server).set_registered_model_alias("liver", "champion", "1")
    assert fetch(ModelRef("liver", alias="champion"), server.uri, bundle_identity, cache_dir=str(tmp_path / "cache")).version == "1"

    with pytest.raises(ConfigError, match="models:/liver/9: not found in the registry"):
        fetch(ModelRef("liver", version="9"), server.uri, bundle_identity, cache_dir=str(tmp_path / "cache"))


def test_a_version_whose_files_differ_from_the_registered_identity_is_refused(server, tmp_path):
    bundle = tiny_bundle(str(tmp_path / "bundle"))
    tracker = Tracker.open(TrackingConfig(uri=server.uri, experiment="unet-test"))
    tracker.log_folder(bundle, BUNDLE_ARTIFACT)
    version = tracker.register("tampered", "0" * 16)  # not the identity of what was logged
    with pytest.raises(InputError, match="not the bundle that was registered"):
        fetch(ModelRef("tampered", version=version), server.uri, bundle_identity, cache_dir=str(tmp_path / "cache"))
    assert not any("bundle.json" in files for _, _, files in os.walk(tmp_path / "cache"))  # nothing published


def test_a_resumed_run_continues_the_same_run(server):
    first = Tracker.open(TrackingConfig(uri=server.uri, experiment="unet-test", run_name="resumable"))
    first.log_params({"seed": 1})
    first.log_metrics({"val_dice": 0.5}, 0)
    again = Tracker.open(TrackingConfig(uri=server.uri, run_id=first.run_id))
    again.log_params({"seed": 1, "resumed_from": 1})  # a param already logged is not logged again
    again.log_metrics({"val_dice": 0.6}, 1)
    again.close()
    assert again.run_id == first.run_id and again.lost is None
    history = _client(server).get_metric_history(first.run_id, "val_dice")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.6)]


def test_a_server_that_is_down_costs_one_warning_and_seconds(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    warnings: list[str] = []
    t = time.monotonic()
    tracker = Tracker.open(TrackingConfig(uri=f"http://127.0.0.1:{port}"), warn=warnings.append)
    for epoch in range(3):
        tracker.log_metrics({"val_dice": 0.5}, epoch)
    tracker.log_folder(str(tmp_path), BUNDLE_ARTIFACT)
    assert tracker.register("x", "0" * 16) is None
    tracker.close()
    assert time.monotonic() - t < 60
    assert len(warnings) == 1 and warnings[0].startswith("tracking lost: could not start the run at http://127.0.0.1:")
    assert tracker.lost and not tracker.active


def test_credentials_in_the_uri_are_refused():
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_USERNAME"):
        TrackingConfig(uri="http://user:secret@127.0.0.1:5000")


def test_unet_segment_takes_a_registered_model_and_the_tables_name_it(server, tmp_path, ray_local, monkeypatch):
    import json as _json

    from jobs import segment
    from support.tree import small_archive
    from unet_core.segmentation.tables import read_volume_table

    bundle = tiny_bundle(str(tmp_path / "bundle"))
    tracker = Tracker.open(TrackingConfig(uri=server.uri, experiment="unet-test", run_name="to-segment"))
    tracker.log_folder(bundle, BUNDLE_ARTIFACT)
    version = tracker.register("segmenter", bundle_identity(bundle))
    small_archive(tmp_path / "archive", n_series=2)
    monkeypatch.setenv("UNET_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = str(tmp_path / "out")
    args = ["--input", str(tmp_path / "archive"), "--model", f"models:/segmenter/{version}", "--output", out,
            "--tracking-uri", server.uri, "--batch-size", "8"]
    assert segment.main(args) == 0
    rows = [r for r in read_volume_table(out) if r["status"] == "ok"]
    assert len(rows) == 2
    assert {(r["model"], r["model_version"], r["model_run_id"]) for r in rows} == {
        (f"models:/segmenter/{version}", version, tracker.run_id)}
    assert {r["model_registry"] for r in rows} == {server.uri}
    summary = _json.loads(open(os.path.join(out, "summary.json")).read())
    assert (summary["model_version"], summary["model_run_id"]) == (version, tracker.run_id)

    # A new version of the same files is a model change: the re-run redoes both volumes.
    again = tracker.register("segmenter", bundle_identity(bundle))
    args[3] = f"models:/segmenter/{again}"
    assert segment.main(args) == 0
    summary = _json.loads(open(os.path.join(out, "summary.json")).read())
    assert summary["model_version"] == again and summary["segmented_now"] == 2
