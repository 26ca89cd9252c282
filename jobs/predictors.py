"""Predictor actors for `unet segment`, and the pool that hands them out least-busy first.

    PredictorServer  one model per actor, loaded and traced once (GPU per actor with --num-gpus)
    PredictorPool    a threaded actor: least-busy routing, growth from --min-predictors up to
                     --max-predictors while every predictor is busy, idle predictors above the
                     minimum retired; Ray restarts a predictor whose process died
    predict_with(pool, attempts)  the callable a volume task passes to the domain's
                     segment_volume: a call that fails, or kills its predictor, is retried up to
                     `attempts` times in all, then raises PredictionFailed. Retries hold a predictor
                     alone: a volume that kills its predictor takes no other volume's attempts
                     with it (those in flight with it succeed on their own retry). Waiting for a
                     predictor that Ray is restarting is not an attempt.
"""
from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import psutil

from jobs.capacity import CpuNeed, require_cpus
from jobs.output import log
from unet_core.errors import ConfigError
from unet_core.inference import SlicePredictor
from unet_core.segmentation.stages import PredictionFailed

IDLE_RETIRE_SECONDS = 60.0
EXCLUSIVE = 1 << 20  # the busy count of a predictor lent to one caller alone
RESTART_WAIT_SECONDS = 600.0  # a predictor that does not come back in this time fails the call


class PredictorServer:
    def __init__(self, bundle_uri: str, batch_size: int, precision: str, xla: bool):
        self.predictor = SlicePredictor(bundle_uri, batch_size, precision, xla)
        self.predictor.warm_up()

    def ready(self) -> bool:
        return True

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        before = self.predictor.model_seconds
        prob = self.predictor.predict(x)
        return prob, self.predictor.model_seconds - before


READY_ATTEMPTS = 10  # predictors restarted while they load (a node lost), before the job gives up


class PredictorPool:
    def __init__(self, bundle_uri: str, batch_size: int, precision: str, xla: bool, min_size: int, max_size: int,
                 num_gpus: float):
        import ray

        self._cls = ray.remote(PredictorServer).options(
            num_gpus=num_gpus, num_cpus=0 if num_gpus else 1,
            max_restarts=-1,  # a predictor whose process died comes back for the next volume
            max_task_retries=0)  # a call in flight is not replayed blindly: predict_with decides
        self._args = (bundle_uri, batch_size, precision, xla)
        self._min, self._max = min_size, max(min_size, max_size)
        self._lock = threading.Lock()
        self._servers = [self._cls.remote(*self._args) for _ in range(min_size)]
        self._busy = [0] * min_size
        self._last_used = [time.monotonic()] * min_size
        self.started = min_size

    def ready(self, attempts: int = READY_ATTEMPTS) -> int:
        """Block until the first `min_size` predictors have loaded; raises if the model cannot load.
        A predictor whose node or process went while it loaded is restarted by Ray (max_restarts):
        that is waited for, a few times; an exception of the model's own loading is raised at once."""
        import ray

        for attempt in range(attempts):
            try:
                ray.get([s.ready.remote() for s in self._servers])
                return len(self._servers)
            except ray.exceptions.RayTaskError:
                raise  # the bundle itself cannot load
            except ray.exceptions.RayActorError:
                if attempt == attempts - 1:
                    raise
                time.sleep(2.0)  # Ray restarts it elsewhere
        return len(self._servers)

    def acquire(self, exclusive: bool = False) -> tuple[int, object] | None:
        """The least busy predictor (a new one while all are busy and the pool may grow); with
        `exclusive`, an idle one lent to this caller alone. None: none fits now, ask again."""
        with self._lock:
            self._retire_idle()
            live = [i for i, s in enumerate(self._servers) if s is not None]
            i = min(live, key=lambda k: self._busy[k])
            if exclusive:
                if self._busy[i] > 0:
                    return None
                self._busy[i] = EXCLUSIVE
                return i, self._servers[i]
            if self._busy[i] >= EXCLUSIVE:
                return None
            if self._busy[i] > 0 and len(live) < self._max:
                self._servers.append(self._cls.remote(*self._args))
                self._busy.append(0)
                self._last_used.append(time.monotonic())
                self.started += 1
                i = len(self._servers) - 1
            self._busy[i] += 1
            self._last_used[i] = time.monotonic()
            return i, self._servers[i]

    def release(self, i: int) -> None:
        with self._lock:
            self._busy[i] = 0 if self._busy[i] >= EXCLUSIVE else self._busy[i] - 1
            self._last_used[i] = time.monotonic()

    def _retire_idle(self) -> None:
        import ray

        now = time.monotonic()
        live = [i for i, s in enumerate(self._servers) if s is not None]
        for i in live[self._min:]:
            if self._busy[i] == 0 and now - self._last_used[i] > IDLE_RETIRE_SECONDS:
                ray.kill(self._servers[i])
                self._servers[i] = None

    def stats(self) -> dict:
        with self._lock:
            return {"predictors_started": self.started, "predictors_live": sum(s is not None for s in self._servers)}

    def shutdown(self) -> None:
        import ray

        with self._lock:
            for s in self._servers:
                if s is not None:
                    ray.kill(s)
            self._servers = [None] * len(self._servers)


def start_pool(bundle_uri: str, batch_size: int, precision: str, xla: bool, min_size: int, max_size: int,
               num_gpus: float):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # num_cpus=0: routing is bookkeeping; max_concurrency: `ready` blocks while `acquire` answers.
    # On the driver's node: the pool owns the predictors, and a node lost elsewhere must not take it
    # (with the driver's node, the job goes anyway).
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(PredictorPool).options(num_cpus=0, max_concurrency=64, scheduling_strategy=here).remote(
        bundle_uri, batch_size, precision, xla, min_size, max_size, num_gpus)


class Predictors:
    """The predictor pool of one job as a context manager: started by `start()` (a first run
    starts it early, so that the model loads while the archive is scanned), or when first needed;
    shut down and killed when the job ends, however it ends."""

    def __init__(self, bundle_uri: str, batch_size: int, precision: str, xla: bool, min_size: int, max_size: int,
                 num_gpus: float):
        self._args = (bundle_uri, batch_size, precision, xla, min_size, max_size, num_gpus)
        self.pool = None

    def start(self):
        if self.pool is None:
            require_cpus(self.cpu_need())  # a cluster that can never hold them is said now, not waited on
            self.pool = start_pool(*self._args)
        return self.pool

    def cpu_need(self) -> CpuNeed:
        """CPU predictors hold one CPU each; the volume and scan tasks need one more at the least."""
        low, num_gpus = self._args[4], self._args[6]
        if num_gpus:
            return CpuNeed(1, "1 for the tasks that read and decode volumes; the predictors run on GPUs")
        return CpuNeed(low + 1, f"1 for each of the {low} predictor actor{'s' if low != 1 else ''} (--min-predictors, --concurrency) "
                                "and 1 for the tasks that read and decode volumes")

    def ready(self) -> None:
        """Block until the first predictors have loaded the model; a bundle that cannot serve is a
        configuration error of the job, not an error of each volume."""
        import ray


        try:
            ray.get(self.start().ready.remote())
        except ray.exceptions.RayError as exc:
            raise ConfigError(f"{self._args[0]}: the model cannot be loaded on a predictor: "
                              f"{str(exc).strip().splitlines()[-1]}") from None

    def stats(self) -> dict:
        import ray

        return ray.get(self.pool.stats.remote()) if self.pool is not None else {}

    def __enter__(self) -> Predictors:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is None:
            return
        import ray

        try:  # the predictors go now, not whenever their handles are collected
            ray.get(self.pool.shutdown.remote(), timeout=60)
        except (ray.exceptions.RayError, TimeoutError):  # gone already: the job's own error is the one to show
            log.debug("the predictor pool could not be shut down cleanly", exc_info=True)
        finally:
            with contextlib.suppress(Exception):
                ray.kill(self.pool)
            self.pool = None


def _lease(pool, exclusive: bool):
    import ray

    while (got := ray.get(pool.acquire.remote(exclusive))) is None:
        time.sleep(0.05)
    return got


def _wait_until_up(server) -> None:
    """Until a predictor that Ray is restarting answers again (its model loaded)."""
    import ray

    deadline = time.monotonic() + RESTART_WAIT_SECONDS
    while True:
        try:
            ray.get(server.ready.remote())
            return
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def predict_with(pool, attempts: int):
    def predict(x: np.ndarray) -> tuple[np.ndarray, float, int]:
        import ray


        last, attempt = "", 0
        while attempt < attempts:
            i, server = _lease(pool, exclusive=attempt > 0)
            try:
                _wait_until_up(server)
                attempt += 1
                prob, seconds = ray.get(server.predict.remote(x))
                return prob, seconds, attempt
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                # It answered just before: the process died during this call (alone on it, from
                # the second attempt on, so then it was this volume).
                last = f"the predictor process died ({type(exc).__name__})"
            except ray.exceptions.RayError as exc:  # the model raised
                lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
                last = lines[-1] if lines else type(exc).__name__
            finally:
                pool.release.remote(i)
        raise PredictionFailed(f"{last} (after {attempts} attempts)", attempts)

    return predict


def no_predictor_left(timeout: float = 30.0) -> bool:
    """Wait until no predictor process of an earlier run is left (so that a run's memory peak is its
    own); False if one still is after `timeout` seconds."""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any("PredictorServer" in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])):
            return True
        time.sleep(0.2)
    return False
