"""Training's faults survived, with real processes and real kills (marked slow; `make test-all` runs
them): a Ray Train worker killed mid-epoch, and a worker node lost from a 3-node cluster. Each run
restarts from its last registered checkpoint, finishes, writes the bundle, and the bundle's history
records the restart with no epoch lost or repeated. (The segment run's faults: test_faults.py;
elastic training's: test_train_elastic_cluster.py.)"""
from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest

from support.bundles import SMALL_MODEL
from support.jobrun import committed_checkpoints, finish, job_env, session_processes, start_unet, wait_for
from unet_core.io import storage

pytestmark = pytest.mark.slow


def test_training_survives_a_killed_worker(prepared, tmp_path):
    """Kill one Ray Train worker mid-epoch: the run restarts from its last checkpoint, finishes,
    writes the bundle, and the bundle's history records the restart."""
    output = str(tmp_path / "model")
    proc = start_unet("train", "--data", prepared, "--output", output, "--workers", "2", "--epochs", "12",
                      "--max-failures", "2", *SMALL_MODEL)
    runs = Path(f"{output}.runs")
    wait_for(lambda: committed_checkpoints(runs), 600, "the first registered checkpoint", proc)
    time.sleep(2.0)  # into the next epoch
    workers = wait_for(lambda: session_processes("RayTrainWorker", proc.pid), 60, "the training workers", proc)
    workers[-1].kill()
    rc, log = finish(proc)
    assert rc == 0, log[-4000:]
    training = json.loads(storage.read_bytes(f"{output}/bundle.json"))["training"]
    resumed = [e for e in training["events"] if e["event"] == "resumed"]
    assert resumed and resumed[0]["from_epoch"] >= 1, training["events"]
    epochs = [h["epoch"] for h in training["history"]]
    assert epochs == list(range(len(epochs))) and len(epochs) >= resumed[0]["from_epoch"]  # none lost or repeated


def test_training_on_three_nodes_survives_losing_one_and_says_it_in_one_line(prepared, tmp_path):
    from support.raycluster import node_running, one_lost_node_line, ray_head, worker_nodes

    output = str(tmp_path / "model")
    token = secrets.token_hex(32)
    # One CPU on the head: at least one of the two training workers lands on a worker node.
    with ray_head(token=token, num_cpus=1) as head, worker_nodes(head, 2, num_cpus=2) as nodes:
        proc = start_unet("train", "--data", prepared, "--output", output, "--workers", "2", "--epochs", "12",
                          "--max-failures", "2", "--address", head.gcs, *SMALL_MODEL,
                          env=job_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
        runs = Path(f"{output}.runs")
        wait_for(lambda: committed_checkpoints(runs), 600, "the first registered checkpoint", proc)
        victim = wait_for(lambda: node_running(nodes, "RayTrainWorker"), 120, "a training worker on a worker node",
                          proc)
        victim.kill()
        rc, log = finish(proc)
    assert rc == 0, log[-4000:]
    one_lost_node_line(log)
    training = json.loads(storage.read_bytes(f"{output}/bundle.json"))["training"]
    resumed = [e for e in training["events"] if e["event"] == "resumed"]
    assert resumed, training["events"]
    epochs = [h["epoch"] for h in training["history"]]
    assert epochs == list(range(len(epochs)))  # none lost or repeated
