"""Live progress on long work: a rich bar on a terminal, else one compact line every
UNET_PROGRESS_INTERVAL seconds (30); background tickers that update it while a call blocks.

    Progress(what, total, unit)   done / total, rate, ETA, failures
    Ticker                        calls tick() from a daemon thread while a `with` body runs
    Polled(progress, count)       a Ticker that updates a Progress from count()
    Timer                         seconds since it was made
"""
from __future__ import annotations

import os
import sys
import threading
import time

DEFAULT_INTERVAL = 30.0


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


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
