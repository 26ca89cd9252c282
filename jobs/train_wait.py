"""A training run that waits for the cluster says so, and `--max-wait` ends the wait.

Ray Train places a run's workers as one placement group of `[resources per worker] x workers`.
While none of the run's is placed (its group pending after a lost node, or an elastic run below
MIN, where Ray Train makes no group at all: docs/design.md, "Elastic training"), `ClusterWait`
says one line every UNET_PROGRESS_INTERVAL seconds:

    waiting for 2 workers (2 CPUs each): the cluster has 1 of 3 CPUs and 0 of 0 GPUs free; waited 30s

and with `--max-wait S`, once the wait reaches S seconds, gives up: `error` is set, `on_give_up`
is called once, and jobs/train.py ends the job with exit status 5.

    WorkerNeed          what one run's worker group takes (a WorkerRange, resources per worker)
    is_placed(...)      whether a placement group table holds the run's group, placed
    waiting_line(...)   the line said while waiting
    ClusterWait         the Ticker that polls the table and the cluster's resources
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from jobs.output import say
from jobs.progress import Ticker, interval
from unet_core.errors import UnetError
from unet_core.training.plan import WorkerRange

_SAME = 1e-6  # resources are floats in the placement group table


@dataclass(frozen=True)
class WorkerNeed:
    workers: WorkerRange
    resources: dict[str, float]  # per worker: "CPU", "GPU", "memory" (bytes), as Ray Train asks for them

    def wanted(self) -> str:
        """"2 workers (2 CPUs each)", "at least 1 worker (up to 2; 1 CPU, 1 GPU each)"."""
        each = ", ".join(_amount(self.resources.get(k, 0), unit) for k, unit in (("CPU", "CPU"), ("GPU", "GPU"))
                         if self.resources.get(k, 0))
        plural = "s" if self.workers.min != 1 else ""
        if self.workers.elastic:
            return f"at least {self.workers.min} worker{plural} (up to {self.workers.max}; {each} each)"
        return f"{self.workers.min} worker{plural} ({each} each)"


class WaitedTooLong(UnetError):
    """The cluster could not give a run its workers within --max-wait (exit status 5)."""


def _amount(value: float, unit: str) -> str:
    text = f"{value:g}"
    return f"{text} {unit}" + ("" if value == 1 else "s")


def _bundle_is(bundle: dict, resources: dict[str, float]) -> bool:
    keys = {k for k, v in bundle.items() if v} | {k for k, v in resources.items() if v}
    return all(abs(float(bundle.get(k, 0)) - float(resources.get(k, 0))) < _SAME for k in keys)


def is_placed(table: dict[str, dict], need: WorkerNeed) -> bool:
    """`table` is `ray.util.placement_group_table()`: id -> {"state", "bundles": {index: resources}}.
    The run's group is one of MIN..MAX bundles, each the worker's resources, in state CREATED."""
    for group in table.values():
        bundles = list((group.get("bundles") or {}).values())
        if (group.get("state") == "CREATED" and need.workers.min <= len(bundles) <= need.workers.max
                and all(_bundle_is(b, need.resources) for b in bundles)):
            return True
    return False


def _free(free: dict, total: dict) -> str:
    return (f"{free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPUs and {free.get('GPU', 0):g} of "
            f"{total.get('GPU', 0):g} GPUs free")


def waiting_line(need: WorkerNeed, free: dict, total: dict, waited: float, max_wait: float | None) -> str:
    """One line while a run waits for its workers; `free` and `total` are the cluster's
    (`ray.available_resources()`, `ray.cluster_resources()`)."""
    line = f"waiting for {need.wanted()}: the cluster has {_free(free, total)}; waited {waited:.0f}s"
    return line + (f" (--max-wait {max_wait:g}s)" if max_wait else "")


def gave_up_message(need: WorkerNeed, free: dict, total: dict, max_wait: float, where: str) -> str:
    fewer = f"--workers 1-{need.workers.max}" if need.workers.max > 1 else "fewer CPUs or GPUs per worker"
    return (f"the cluster could not give this run {need.wanted()} within --max-wait {max_wait:g}s: it has "
            f"{_free(free, total)}. The run's checkpoints are in {where}: re-run with --resume when the "
            f"cluster has room, or take what it has ({fewer})")


class ClusterWait(Ticker):
    """Polls the placement group table and the cluster's resources every `every` seconds while
    `trainer.fit()` runs; says what the run waits for, and gives up after `max_wait` seconds."""

    every = 2.0

    def __init__(self, need: WorkerNeed, max_wait: float | None, where: str,
                 on_give_up: Callable[[], None], tell: Callable[[str], None] = say):
        super().__init__()
        self.need, self.max_wait, self.where = need, max_wait, where
        self.on_give_up, self.tell = on_give_up, tell
        self.since: float | None = None  # when the run was last seen without its workers
        self.last_line = 0.0
        self.error: WaitedTooLong | None = None

    def tick(self) -> None:
        import ray

        try:
            placed = is_placed(ray.util.placement_group_table(), self.need)
            free, total = ray.available_resources(), ray.cluster_resources()
        except Exception:  # noqa: BLE001 - a look at the cluster never fails the run
            return
        self.observe(placed, free, total, time.monotonic())

    def observe(self, placed: bool, free: dict, total: dict, now: float) -> None:
        """One look at the cluster at time `now` (monotonic seconds)."""
        if placed or self.error is not None:
            self.since = None
            return
        if self.since is None:
            self.since, self.last_line = now, now
        waited = now - self.since
        if self.max_wait and waited >= self.max_wait:
            self.error = WaitedTooLong(gave_up_message(self.need, free, total, self.max_wait, self.where))
            self.on_give_up()
        elif now - self.last_line >= interval():
            self.last_line = now
            self.tell(waiting_line(self.need, free, total, waited, self.max_wait))
