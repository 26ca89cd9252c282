"""Elastic training without a cluster: `--workers N|MIN-MAX` and its refusals, the step plan per
world size, the lines an elastic run says when it changes size and while it waits for workers,
--max-wait giving up, and the loop re-planning (and recording it) when it resumes at another size.
The 3-node runs are in tests/test_train_elastic_cluster.py."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest

from jobs import train
from jobs.train_progress import TrainWatcher
from jobs.train_wait import ClusterWait, WorkerNeed, is_placed, waiting_line
from unet_core.config import AugmentConfig, ModelConfig, TrainConfig
from unet_core.errors import ConfigError
from unet_core.training.events import Resumed, Sized
from unet_core.training.loop import LoopConfig, SerialHost, plan_for, run_training
from unet_core.training.plan import StepPlan, WorkerRange, size_line
from unet_core.training.rows import WorkerRows


@pytest.mark.parametrize("text, expected", [("2", WorkerRange(2, 2)), ("1-8", WorkerRange(1, 8)),
                                            (" 3-3 ", WorkerRange(3, 3))])
def test_workers_take_a_number_or_a_range(text, expected):
    workers = WorkerRange.parse(text)
    assert workers == expected
    assert workers.elastic == (expected.min < expected.max)
    assert str(workers) == ("1-8" if text == "1-8" else str(expected.min))


@pytest.mark.parametrize("text, reason", [("0", "at least 1"), ("0-2", "at least 1"), ("3-1", "MIN is more than MAX"),
                                          ("two", "a number of workers"), ("1-", "a number of workers"),
                                          ("-2", "a number of workers"), ("1-2-3", "a number of workers")])
def test_a_bad_worker_count_is_refused_naming_it(text, reason):
    with pytest.raises(ConfigError, match=reason) as info:
        WorkerRange.parse(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("option", [["--workers", "3-1"], ["--workers", "0"], ["--max-wait", "0"]])
def test_unet_train_refuses_them_with_exit_2_before_reading_anything(tmp_path, option, caplog):
    rc = train.main(["--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "model"), *option])
    assert rc == 2
    assert option[1] in caplog.text and not os.path.exists(tmp_path / "model")


def test_the_step_plan_follows_the_world_size():
    """The per-worker batch stays; the global batch and the steps per epoch follow the workers."""
    plans = {w: StepPlan.for_run(128, 32, w, 4) for w in (1, 2, 4)}
    assert [p.steps_per_epoch for p in plans.values()] == [32, 16, 8]
    model = ModelConfig(input_size=16, base_filters=2, depth=2)
    cfg = LoopConfig(model=model, train=TrainConfig(batch_size=4), plan=plans[2], n_train=128, n_val=32)
    assert plan_for(cfg, 1) == plans[1] and plan_for(cfg, 4) == plans[4]
    assert plan_for(cfg, 2) == plans[2]  # a fixed --workers 2 runs the plan the driver made
    no_counts = LoopConfig(model=model, train=TrainConfig(batch_size=4), plan=plans[2])
    assert plan_for(no_counts, 1) == plans[2]


def test_the_size_lines():
    assert size_line(1, 2, 8, 12, first=False) == "went on with 1 worker (of up to 2): global batch 8, 12 steps per epoch"
    assert size_line(2, 2, 16, 6, first=True) == "started with 2 workers (of up to 2): global batch 16, 6 steps per epoch"


def _watched(events, elastic_max: int) -> list[str]:
    stream = io.StringIO()
    watcher = TrainWatcher(box=None, stream=stream, elastic_max=elastic_max)
    for e in events:
        watcher._handle(e)
    return stream.getvalue().splitlines()


def test_a_size_line_in_the_middle_of_an_epoch_leaves_the_step_display_working():
    from unet_core.training.events import StepDone

    lines = _watched([Sized(2, 8, 16, 1), StepDone(1, 3, 16), Sized(1, 4, 32, 1), StepDone(1, 5, 32),
                      StepDone(1, 9, 32)], elastic_max=2)
    assert "went on with 1 worker (of up to 2): global batch 4, 32 steps per epoch" in lines


def test_an_elastic_run_says_its_size_at_the_start_and_at_each_change_only():
    events = [Sized(2, 8, 16, 0), Resumed(3), Sized(1, 4, 32, 3), Resumed(4), Sized(1, 4, 32, 4), Resumed(5),
              Sized(2, 8, 16, 5)]
    assert _watched(events, elastic_max=2) == [
        "started with 2 workers (of up to 2): global batch 8, 16 steps per epoch",
        "resumed from the last checkpoint: epoch 4",
        "went on with 1 worker (of up to 2): global batch 4, 32 steps per epoch",
        "resumed from the last checkpoint: epoch 5",  # the same size again: said as before, nothing more
        "resumed from the last checkpoint: epoch 6",
        "went on with 2 workers (of up to 2): global batch 8, 16 steps per epoch"]
    assert _watched([Sized(2, 8, 16, 0), Resumed(3), Sized(2, 8, 16, 3)], elastic_max=0) == [
        "resumed from the last checkpoint: epoch 4"]  # a fixed --workers N says nothing new


ONE_CPU = {"CPU": 1.0}
NEED = WorkerNeed(WorkerRange(2, 2), {"CPU": 2.0})


def _group(state: str, n: int, resources: dict) -> dict:
    return {"state": state, "bundles": {i: dict(resources) for i in range(n)}}


def test_a_run_is_placed_when_a_group_of_its_workers_is_created():
    elastic = WorkerNeed(WorkerRange(1, 2), ONE_CPU)
    assert is_placed({"a": _group("CREATED", 1, ONE_CPU)}, elastic)
    assert is_placed({"a": _group("CREATED", 2, ONE_CPU)}, elastic)
    assert not is_placed({"a": _group("PENDING", 2, ONE_CPU)}, elastic)
    assert not is_placed({"a": _group("RESCHEDULING", 2, ONE_CPU)}, elastic)
    assert not is_placed({"a": _group("CREATED", 3, ONE_CPU)}, elastic)  # not this run's
    assert not is_placed({"a": _group("CREATED", 1, {"CPU": 0.01})}, elastic)  # a Tune trial's own group
    assert not is_placed({}, elastic)
    gpu = WorkerNeed(WorkerRange(1, 1), {"CPU": 1.0, "GPU": 1.0})
    assert is_placed({"a": _group("CREATED", 1, {"CPU": 1.0, "GPU": 1.0})}, gpu)
    assert not is_placed({"a": _group("CREATED", 1, ONE_CPU)}, gpu)


def test_the_waiting_line_names_the_workers_wanted_and_what_is_free():
    free, total = {"CPU": 1.0}, {"CPU": 3.0}
    assert waiting_line(NEED, free, total, 30.4, None) == (
        "waiting for 2 workers (2 CPUs each): the cluster has 1 of 3 CPUs and 0 of 0 GPUs free; waited 30s")
    elastic = WorkerNeed(WorkerRange(1, 4), {"CPU": 1.0, "GPU": 0.5})
    assert waiting_line(elastic, {"CPU": 0.0, "GPU": 0.0}, {"CPU": 8.0, "GPU": 2.0}, 61, 120) == (
        "waiting for at least 1 worker (up to 4; 1 CPU, 0.5 GPUs each): the cluster has 0 of 8 CPUs and 0 of 2 GPUs "
        "free; waited 61s (--max-wait 120s)")


def test_the_wait_says_a_line_each_interval_and_gives_up_once_after_max_wait(monkeypatch):
    monkeypatch.setenv("UNET_PROGRESS_INTERVAL", "10")
    lines, gave_up = [], []
    wait = ClusterWait(NEED, 25.0, "/runs/liver", on_give_up=lambda: gave_up.append(1), tell=lines.append)
    free, total = {"CPU": 1.0}, {"CPU": 3.0}
    wait.observe(True, free, total, 0.0)  # placed: nothing to say
    for t in (1, 5, 11, 12, 21.5, 24):
        wait.observe(False, free, total, float(t))
    assert [line.split("; waited ")[1] for line in lines] == ["10s (--max-wait 25s)", "20s (--max-wait 25s)"]
    assert not gave_up and wait.error is None
    wait.observe(True, free, total, 25.0)  # placed again: the wait starts over
    wait.observe(False, free, total, 30.0)
    wait.observe(False, free, total, 54.0)
    assert not gave_up
    wait.observe(False, free, total, 55.0)
    wait.observe(False, free, total, 60.0)
    assert gave_up == [1]
    message = str(wait.error)
    assert "could not give this run 2 workers (2 CPUs each) within --max-wait 25s" in message
    assert "1 of 3 CPUs" in message and "/runs/liver" in message and "--workers 1-2" in message


def _rows(n: int, seed: int) -> WorkerRows:
    rng = np.random.default_rng(seed)
    images = [(rng.random((16, 16, 1)) * 0.3 + 0.5 * (np.arange(16)[:, None, None] > 8)).astype(np.float16).tobytes()
              for _ in range(n)]
    masks = [(np.arange(16)[:, None] > 8).repeat(16, 1).astype(np.uint8).tobytes() for _ in range(n)]
    return WorkerRows([(f"case_{i // 4}", i % 4) for i in range(n)], images, masks, np.full(n, 16, np.int32),
                      np.full(n, 16, np.int32), 1)


def test_a_run_resumed_at_another_size_replans_and_records_the_resize(tmp_path):
    """A checkpoint of a 2-worker group, resumed by a group of 1: the loop plans for 1 worker,
    says so (Sized), keeps the optimizer and callbacks, and the history records the resize."""
    rows = {"train": _rows(8, 0), "val": _rows(4, 1)}
    cfg = LoopConfig(model=ModelConfig(input_size=16, base_filters=2, depth=2, dropout=0.0),
                     train=TrainConfig(batch_size=4, epochs=1, seed=3, loss="bce_dice"),
                     plan=StepPlan.for_run(8, 4, 2, 4), augment=AugmentConfig(enabled=False), n_train=8, n_val=4)
    first = SerialHost(rows, str(tmp_path))
    run_training(first, cfg)
    assert first.events[0] == Sized(1, 4, 2, 0)  # 8 // (1 x 4), not the 2-worker plan's 1
    (checkpoint,) = first.checkpoints()
    state_file = os.path.join(checkpoint, "state.json")
    state = json.load(open(state_file))
    state["world_size"] = 2  # as a 2-worker group would have written it
    json.dump(state, open(state_file, "w"))

    again = SerialHost(rows, str(tmp_path), resume=True)
    run_training(again, LoopConfig(**{**cfg.__dict__, "train": TrainConfig(batch_size=4, epochs=2, seed=3,
                                                                            loss="bce_dice")}))
    assert again.events[:2] == [Resumed(1), Sized(1, 4, 2, 1)]
    events = json.load(open(os.path.join(again.checkpoints()[-1], "state.json")))["events"]
    assert [(e["event"], e.get("workers")) for e in events] == [("resumed", None), ("resized", 1)]
    assert [h["epoch"] for h in again.metrics] == [1]
