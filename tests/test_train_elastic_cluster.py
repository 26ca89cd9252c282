"""Training on a 3-node loopback cluster (a head with 1 CPU, two worker nodes with 2 CPUs, token
authentication) that loses a worker node mid-training: `--workers 1-2` goes on with the node that
is left and says so in one line; a fixed `--workers 2` says what it waits for and `--max-wait`
ends it with exit status 5. Each worker takes 2 CPUs, so none fits on the head: a worker node
lost is a worker lost."""
from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

import pytest

from support.bundles import SMALL_MODEL
from support.jobrun import committed_checkpoints, finish, job_env, start_unet, wait_for
from unet_core.io import storage

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _train_and_lose_a_node(prepared: str, output: str, *options: str) -> tuple[int, str]:
    """`unet train` attached to a fresh 3-node cluster; one worker node (with a training worker on
    it) is killed once the first checkpoint is written."""
    from support.raycluster import node_running, ray_head, worker_nodes

    token = secrets.token_hex(32)
    with ray_head(token=token, num_cpus=1) as head, worker_nodes(head, 2, num_cpus=2) as nodes:
        proc = start_unet("train", "--data", prepared, "--output", output, "--cpus-per-worker", "2",
                          "--max-failures", "2", "--address", head.gcs, *SMALL_MODEL, *options,
                          env=job_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, UNET_PROGRESS_INTERVAL="5"))
        runs = Path(f"{output}.runs")
        wait_for(lambda: committed_checkpoints(runs), 900, "the first registered checkpoint", proc)
        victim = wait_for(lambda: node_running(nodes, "RayTrainWorker"), 120, "a training worker on a worker node",
                          proc)
        victim.kill()
        return finish(proc, timeout=1800)


def test_an_elastic_run_that_loses_a_node_goes_on_with_one_worker_and_says_so(prepared, tmp_path):
    output = str(tmp_path / "model")
    rc, log = _train_and_lose_a_node(prepared, output, "--workers", "1-2", "--epochs", "8")
    assert rc == 0, log[-4000:]
    assert "started with 2 workers (of up to 2): global batch 8, 16 steps per epoch" in log, log[-4000:]
    went_on = [line for line in log.splitlines() if line.startswith("went on with")]
    assert went_on == ["went on with 1 worker (of up to 2): global batch 4, 32 steps per epoch"], log[-4000:]
    assert len(re.findall(r"^lost node ", log, re.M)) == 1 and "Traceback" not in log
    training = json.loads(storage.read_bytes(f"{output}/bundle.json"))["training"]
    resized = [e for e in training["events"] if e["event"] == "resized"]
    assert len(resized) == 1 and resized[0]["workers"] == 1, training["events"]
    assert [h["epoch"] for h in training["history"]] == list(range(8))  # none lost or repeated
    assert training["workers"] == "1-2"


def test_a_fixed_run_that_cannot_get_its_workers_says_so_and_max_wait_ends_it(prepared, tmp_path):
    output = str(tmp_path / "model")
    rc, log = _train_and_lose_a_node(prepared, output, "--workers", "2", "--epochs", "30", "--max-wait", "40")
    assert rc == 5, log[-4000:]
    waiting = [line for line in log.splitlines() if line.startswith("waiting for 2 workers (2 CPUs each): ")]
    assert waiting, log[-4000:]
    assert re.search(r"the cluster has [\d.]+ of 3 CPUs and 0 of 0 GPUs free; waited \d+s \(--max-wait 40s\)$",
                     waiting[-1]), waiting
    assert "the cluster could not give this run 2 workers (2 CPUs each) within --max-wait 40s" in log, log[-4000:]
    assert "re-run with --resume" in log and "Traceback" not in log
    assert not os.path.exists(os.path.join(output, "bundle.json"))
    assert list(Path(f"{output}.runs").rglob("checkpoint_*")), "the checkpoints stay for --resume"
