from __future__ import annotations

import subprocess
import sys

import pytest

from jobs.cli import JOBS, main


def test_help_lists_every_job(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for job in ("prepare", "train", "segment", "evaluate", "demo", "bench", "submit"):
        assert job in JOBS and f"  {job}" in out


def test_unknown_job_exits_2(capsys):
    assert main(["segmnet"]) == 2
    assert "unknown job 'segmnet'" in capsys.readouterr().err


@pytest.mark.e2e
def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "segment" in out.stdout
