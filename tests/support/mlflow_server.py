"""A real MLflow tracking server and model registry for the tests: `mlflow server` with a SQLite
store and served artifacts, on a free loopback port, in a folder of its own.

The server is MLflow's full package, which needs an older pyarrow than this project uses, so it
lives in a virtual environment of its own (`make mlflow-server` creates `.venv-mlflow`; `.ci/run`
runs it). The project itself only needs the client (`mlflow-skinny`, the `tracking` extra).
Where no server can be found: a skip with the command that installs it, or a failure under CI.
"""
from __future__ import annotations

import os
import socket
import subprocess

import requests

from jobs.bench.serving import stop_process_group, wait_until_answering

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INSTALL = "make mlflow-server (a venv with mlflow==3.17.2 at .venv-mlflow)"


def server_command() -> str | None:
    """The `mlflow` program with the server in it: $UNET_MLFLOW_SERVER, then the repo's .venv-mlflow."""
    for candidate in (os.environ.get("UNET_MLFLOW_SERVER"), os.path.join(ROOT, ".venv-mlflow", "bin", "mlflow")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`with MlflowServer(folder) as server:` ... `server.uri`; `stop()` / `start()` again on the
    same store (a server that goes away mid-training, then comes back)."""

    def __init__(self, folder: str, port: int | None = None):
        self.folder, self.port = folder, port or _free_port()
        self.proc: subprocess.Popen | None = None
        self.command = server_command()
        if self.command is None:
            raise RuntimeError(f"no MLflow server here: {INSTALL}")

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> MlflowServer:
        os.makedirs(self.folder, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHON"))}
        self.log = open(os.path.join(self.folder, "server.log"), "ab")  # closed in stop()
        self.proc = subprocess.Popen(
            [self.command, "server", "--backend-store-uri", f"sqlite:///{self.folder}/mlflow.db",
             "--artifacts-destination", os.path.join(self.folder, "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_until_answering(self.proc, lambda: requests.get(f"{self.uri}/health", timeout=2).ok, timeout,
                             "mlflow server", lambda: f"see {self.folder}/server.log", interval=0.5)
        return self

    def stop(self) -> None:
        stop_process_group(self.proc)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def skip_or_fail_reason() -> str:
    """"" when a server can run; else the reason (the caller skips, or fails under CI=true)."""
    if server_command() is None:
        return f"no MLflow server: {INSTALL}"
    return ""


__all__ = ["INSTALL", "MlflowServer", "server_command", "skip_or_fail_reason"]
