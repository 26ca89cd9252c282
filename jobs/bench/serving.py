"""A server the benchmarks and tests start as a process of its own (Orthanc, an MLflow server):
waiting until it answers, and stopping its whole process group."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Callable

import requests


def wait_until_answering(proc: subprocess.Popen, probe: Callable[[], bool], timeout: float, what: str,
                         log_tail: Callable[[], str], interval: float = 0.2) -> None:
    """Poll `probe` until it answers True; RuntimeError (with the server's log tail) when the
    process exits first or `timeout` seconds pass. The process is stopped on failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log_tail()}")
        try:
            if probe():
                return
        except requests.RequestException:
            pass
        time.sleep(interval)
    stop_process_group(proc)
    raise RuntimeError(f"{what} did not answer within {timeout:.0f} s: {log_tail()}")


def stop_process_group(proc: subprocess.Popen | None, grace: float = 30.0) -> None:
    """SIGTERM to the process group (started with start_new_session=True), SIGKILL after `grace`."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(grace)
