"""Running `unet` jobs as separate processes in tests: a job of its own starts its own local Ray
instance, whose workers inherit the environment given here (storage endpoint, PYTHONPATH)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout


def job_env(**extra: str) -> dict[str, str]:
    """This environment without Ray's variables (no attaching to the test session's instance)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(extra)
    return env


def start_unet(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.cli", *args], cwd=ROOT, env=env or job_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def run_unet(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> tuple[int, str]:
    return finish(start_unet(*args, env=env), timeout)


def session_processes(marker: str, root_pid: int) -> list:
    """Processes of the run started as `root_pid` (its whole session) whose command line holds
    `marker` (psutil.Process objects)."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []) and os.getsid(p.pid) == root_pid:
                found.append(p)
        except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            continue
    return found


def committed_checkpoints(runs: Path) -> list[str]:
    """The checkpoints Ray Train has registered below a training's run folder (`<output>.runs`):
    the ones its checkpoint manager lists in the snapshot it writes once every worker's report of
    that checkpoint has reached it. A `checkpoint_*` folder appears earlier, while the report is on
    its way: a worker lost then restarts the run from the checkpoint before, or from scratch."""
    import json

    found = []
    for snapshot in runs.rglob("checkpoint_manager_snapshot.json"):
        try:
            found += [r["checkpoint_dir_name"] for r in json.loads(snapshot.read_text())["checkpoint_results"]]
        except (OSError, ValueError, KeyError, TypeError):  # being written
            continue
    return found


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, poll: float = 0.2):
    """`predicate()`'s first true value within `timeout` seconds; fails naming `what`, and with the
    run's last output if `proc` ends first."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {what}:\n{proc.stdout.read()[-4000:]}")
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")
