"""What a person sees while a job runs: quiet by default, live progress, a summary at the end.

    quiet(verbose)     before Ray or TensorFlow start: TensorFlow's C++ / absl logging off, Ray's and
                       Ray Data's start-up, plan and stats lines down to errors, dependency warnings
                       filtered, and the same for every Ray worker (`worker_env`) whose own output
                       does not reach this terminal unless -v (`log_to_driver`)
    Progress(...)      a rich progress display on a terminal; otherwise (CI, `unet submit` logs,
                       Kubernetes) one compact line every UNET_PROGRESS_INTERVAL seconds (30)

-v restores everything: INFO logs of every library, worker output, Ray Data's own lines.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings

VERBOSE = False
DEFAULT_INTERVAL = 30.0
# Warnings of dependencies that say nothing a user can act on (deprecations inside Ray, Keras, TF).
QUIET_CATEGORIES = (DeprecationWarning, FutureWarning, PendingDeprecationWarning)
_QUIET_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "absl", "tensorflow", "h5py", "openjpeg")


def worker_env(verbose: bool | None = None) -> dict[str, str]:
    """Environment variables for Ray's worker processes (tasks, actors, Train workers)."""
    verbose = VERBOSE if verbose is None else verbose
    if verbose:
        return {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")}
    return {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR",
            "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning"}


def quiet(verbose: bool) -> None:
    """Set this process's output policy; call before Ray or TensorFlow are imported where possible."""
    global VERBOSE
    VERBOSE = verbose
    for key, value in worker_env(verbose).items():
        if verbose:
            os.environ.setdefault(key, value)
        else:
            os.environ[key] = value
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)  # a no-op where logging is set up (tests)
    logging.getLogger().setLevel(level)
    logging.getLogger("unet").setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    if not verbose:
        for category in QUIET_CATEGORIES:
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("ignore", message=".*[Pp]rogress bars disabled.*")


def import_tensorflow() -> None:
    """Import TensorFlow in this process. Quiet: with file descriptor 2 pointed at /dev/null while
    it loads and probes for CUDA, since TensorFlow 2.19+ logs through absl in C++, which
    TF_CPP_MIN_LOG_LEVEL no longer silences (oneDNN notices, "Could not find cuda drivers",
    cuInit errors: docs/design.md, fact 18)."""
    if VERBOSE or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # the CUDA probe logs too
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _drop_raylet_noise() -> None:
    """Ray prints the raylet's warnings on the driver whatever log_to_driver says; one of them,
    about starting more Python workers than cores, says nothing a user can act on here (Ray Data
    and Ray Train start their own workers). Dropped unless -v; every other message still shows."""
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream
    if getattr(original, "_unet_filtered", False):
        return

    def filtered(data, ignore_prefix):
        lines = data.get("lines", []) if isinstance(data, dict) else []
        if not VERBOSE and data.get("pid") == "raylet" and any("worker processes have been started" in str(x) for x in lines):
            return
        return original(data, ignore_prefix)

    filtered._unet_filtered = True
    ray_worker.print_to_stdstream = filtered


def quiet_ray_loggers() -> None:
    """Ray sets its loggers' levels when it is imported: set ours again after (every job that
    imports Ray without starting it, like `unet submit`, calls this)."""
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if VERBOSE else logging.ERROR)
    for name in ("ray.dashboard", "ray._private.runtime_env", "ray.job_submission"):
        logging.getLogger(name).setLevel(logging.INFO if VERBOSE else logging.ERROR)


def quiet_ray_data() -> None:
    """Ray Data's execution plan, per-dataset stats and progress bars (we draw our own), after
    ray.init (its logger configuration runs there)."""
    import ray

    _drop_raylet_noise()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = VERBOSE and sys.stderr.isatty()
    for attr in ("print_on_execution_start", "enable_rich_progress_bars"):
        if hasattr(ctx, attr):
            setattr(ctx, attr, VERBOSE if attr == "print_on_execution_start" else False)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if VERBOSE else logging.ERROR)


def say(text: str) -> None:
    """A line about where a job stands (stderr; the final summary goes to stdout)."""
    print(text, file=sys.stderr, flush=True)


def interval() -> float:
    try:
        return max(1.0, float(os.environ.get("UNET_PROGRESS_INTERVAL", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Done / total of one stage, with a rate (of `rate_unit`, e.g. slices), an ETA and failures.

    On a terminal: a rich progress bar on stderr. Otherwise one line every `interval()` seconds
    and one at the end: "segment: 120/4,000 volumes (3%), 45.2 slices/s, ETA 1h02m, 2 failed"."""

    def __init__(self, what: str, total: int, unit: str, rate_unit: str | None = None, stream=None,
                 tty: bool | None = None):
        self.what, self.total, self.unit, self.rate_unit = what, total, unit, rate_unit or unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.done = self.failed = self.amount = 0
        self.start = self.last_line = time.monotonic()
        self._rich = None
        if self.tty and total:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn(unit), TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
                TextColumn("{task.fields[failed]}"), console=Console(file=self.stream), transient=False,
            )
            self._task = self._rich.add_task(what, total=total, rate="", failed="")
            self._rich.start()

    def rate(self) -> float:
        return self.amount / max(1e-9, time.monotonic() - self.start)

    def eta(self) -> float | None:
        if not self.done or self.done >= self.total:
            return None
        return (time.monotonic() - self.start) / self.done * (self.total - self.done)

    def line(self) -> str:
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        parts = [f"{self.what}: {self.done:,}/{self.total:,} {self.unit}{pct}"]
        if self.done:
            parts.append(f"{self.rate():.1f} {self.rate_unit}/s")
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {_duration(eta)}")
        if self.failed:
            parts.append(f"{self.failed:,} failed")
        return ", ".join(parts)

    def update(self, done: int | None = None, failed: int | None = None, amount: int | None = None,
               advance: int = 0) -> None:
        self.done = self.done + advance if done is None else done
        self.failed = self.failed if failed is None else failed
        self.amount = self.amount if amount is None else amount
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done, rate=f"{self.rate():.1f} {self.rate_unit}/s",
                              failed=f"{self.failed} failed" if self.failed else "")
        elif time.monotonic() - self.last_line >= interval():
            self.last_line = time.monotonic()
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
        elif self.total and time.monotonic() - self.start >= interval():  # it printed lines: the last one
            print(self.line(), file=self.stream, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Ticker:
    """A context manager that calls `tick()` every `every` seconds in a daemon thread while the
    body runs, then `finish()` once (after the thread has stopped)."""

    every = 0.5

    def __init__(self) -> None:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def tick(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.tick()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.finish()


class EventBox:
    """A Ray actor's body (`ray.remote(num_cpus=0)(EventBox)`): workers `put` small dicts, the
    driver `take`s them. Rank 0 of `unet train` reports steps and epochs through one."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def put(self, event: dict) -> None:
        self.events.append(event)

    def take(self) -> list[dict]:
        out, self.events = self.events, []
        return out


def epoch_line(e: dict) -> str:
    """One line per epoch: epoch/total, loss, Dice, val Dice, learning rate, slices/s, seconds."""
    m = e["metrics"]
    return (f"epoch {e['epoch'] + 1:>3}/{e['epochs']}  loss {m.get('train_loss', float('nan')):.4f}  "
            f"dice {m.get('train_dice_hard', float('nan')):.4f}  val dice {m.get('val_dice_hard', float('nan')):.4f}  "
            f"lr {m.get('learning_rate', float('nan')):.2e}  {m.get('slices_per_second', 0.0):.1f} slices/s  "
            f"{m.get('epoch_seconds', 0.0):.0f}s")


class TrainWatcher(Ticker):
    """Drains an EventBox from a thread while `trainer.fit()` blocks: a step progress display per
    epoch, one line per epoch, and learning-rate changes, early stopping and resumption said once."""

    def __init__(self, box, stream=None):
        super().__init__()
        self.box, self.stream = box, stream or sys.stderr
        self.epochs_seen: list[dict] = []
        self._progress: Progress | None = None
        self._epoch = None

    def _handle(self, e: dict) -> None:
        if e["kind"] == "resumed":
            print(f"resumed from the last checkpoint: epoch {e['epoch'] + 1}", file=self.stream, flush=True)
        elif e["kind"] == "step":
            if self._epoch != e["epoch"]:
                self._close_progress()
                self._epoch = e["epoch"]
                self._progress = Progress(f"epoch {e['epoch'] + 1}", e["steps"], "steps", stream=self.stream)
            self._progress.update(e["step"])
        elif e["kind"] == "epoch":
            self._close_progress()
            self._epoch = None
            self.epochs_seen.append(e)
            print(epoch_line(e), file=self.stream, flush=True)
            if e.get("new_learning_rate") is not None:
                print(f"  learning rate reduced to {e['new_learning_rate']:.2e} (val Dice did not improve)",
                      file=self.stream, flush=True)
            if e.get("stop"):
                print(f"  stopped early: best val Dice {e['best_value']:.4f} at epoch {e['best_epoch'] + 1}",
                      file=self.stream, flush=True)

    def _close_progress(self) -> None:
        if self._progress is not None:
            self._progress.total = self._progress.done  # an epoch ends where its steps end
            self._progress.close()
            self._progress = None

    def tick(self) -> None:
        import ray

        try:
            events = ray.get(self.box.take.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - the display must never fail a training run
            return
        for e in events:
            self._handle(e)

    def finish(self) -> None:
        self.tick()
        self._close_progress()


class Polled(Ticker):
    """Updates a Progress from `count()` every few seconds while a blocking call runs (e.g.
    `unet prepare` counting the per-case summaries its write has published)."""

    def __init__(self, progress: Progress, count, every: float = 2.0):
        super().__init__()
        self.progress, self.count, self.every = progress, count, every

    def tick(self) -> None:
        try:
            self.progress.update(self.count())
        except Exception:  # noqa: BLE001 - a display never fails the job
            pass

    def finish(self) -> None:
        self.tick()
        self.progress.close()
