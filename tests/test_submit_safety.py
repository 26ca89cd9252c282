"""What `unet submit` may send: the cluster token only over https or to this machine, and from a
checkout exactly the project's code, never a .env, scans, reports or models lying next to it."""
from __future__ import annotations

import pytest

from jobs import submit
from unet_core.errors import ConfigError


def test_a_token_goes_over_https_or_to_this_machine_only():
    for address in ("https://head.example.org:8265", "http://127.0.0.1:8265", "http://localhost:8265",
                    "http://[::1]:8265"):
        submit.check_transport(address, has_token=True, insecure_http=False)
    with pytest.raises(ConfigError, match=r"plain http to head\.example\.org.*https://.*--insecure-http"):
        submit.check_transport("http://head.example.org:8265", has_token=True, insecure_http=False)
    with pytest.raises(ConfigError, match="10.1.2.3"):
        submit.check_transport("http://10.1.2.3:8265", has_token=True, insecure_http=False)
    submit.check_transport("http://head.example.org:8265", has_token=True, insecure_http=True)  # the lab's choice
    submit.check_transport("http://head.example.org:8265", has_token=False, insecure_http=False)  # nothing secret


def test_from_a_checkout_only_the_projects_code_is_shipped(tmp_path):
    code = tmp_path / "checkout"
    files = {"pyproject.toml": b"[project]\nname = 'unet-ray'\n", "jobs/__init__.py": b"", "jobs/cli.py": b"",
             "jobs/bench/io.py": b"", "unet_core/__init__.py": b"", "unet_core/templates/r.html.j2": b"x",
             # what must stay home
             ".env": b"AWS_SECRET_ACCESS_KEY=xyz", "scan.DCM": b"DICM", "jobs/IM0001": b"\0" * 128 + b"DICM",
             "unet_core/report.html": b"<html>", "models/model.keras": b"k", "tests/test_x.py": b"",
             "jobs/__pycache__/cli.cpython-311.pyc": b"", "unet_core/notes.txt": b"patient list"}
    for name, data in files.items():
        (code / name).parent.mkdir(parents=True, exist_ok=True)
        (code / name).write_bytes(data)
    staged = submit.stage_checkout(code)
    shipped = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    assert shipped == ["jobs/__init__.py", "jobs/bench/io.py", "jobs/cli.py", "pyproject.toml",
                       "unet_core/__init__.py", "unet_core/templates/r.html.j2"]
