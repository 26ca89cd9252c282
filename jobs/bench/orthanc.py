"""A local Orthanc PACS with its DICOMweb plugin on a loopback port: the DICOMweb benchmark's
server and the tests' (tests/support/orthanc.py adds their helpers).

`Orthanc(folder)` writes a configuration (HTTP on a free loopback port, basic authentication on,
the DICOM port off, storage and index in `folder`) and `start()` runs Debian's `Orthanc` binary
(packages `orthanc` and `orthanc-dicomweb`) with it until `stop()`.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from jobs.bench.serving import stop_process_group, wait_until_answering

BINARY = "Orthanc"
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")
USER, PASSWORD = "unet", "test-password-not-secret"


def _plugin() -> str | None:
    for folder in PLUGIN_DIRS:
        path = os.path.join(folder, "libOrthancDicomWeb.so")
        if os.path.exists(path):
            return path
    return None


def installed() -> bool:
    return shutil.which(BINARY) is not None and _plugin() is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self, folder: str | Path, port: int | None = None):
        self.folder = Path(folder)
        self.port = port or _free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.folder / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root as `unet segment --input` takes it."""
        return f"dicomweb+http://127.0.0.1:{self.port}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return USER, PASSWORD

    def env(self) -> dict[str, str]:
        return {"DICOMWEB_USER": USER, "DICOMWEB_PASSWORD": PASSWORD}

    def _config(self) -> dict:
        return {
            "Name": "unet-ray-test", "HttpPort": self.port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "DicomServerEnabled": False, "DicomPort": 0,
            "StorageDirectory": str(self.folder / "storage"), "IndexDirectory": str(self.folder / "index"),
            "Plugins": [_plugin()], "HttpTimeout": 60, "StableAge": 1,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Ssl": False,
                         "Host": f"127.0.0.1:{self.port}"},
        }

    def start(self, timeout: float = 60) -> "Orthanc":
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self._config(), indent=1))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([BINARY, str(config)], stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_until_answering(self.proc, lambda: requests.get(self.url + "/system", auth=self.auth, timeout=2).ok,
                             timeout, "Orthanc", lambda: self.log.read_text()[-2000:])
        return self

    def stop(self) -> None:
        stop_process_group(self.proc)
        self.proc = None

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def upload(self, paths, workers: int = 4) -> int:
        """Store DICOM files through Orthanc's REST API, `workers` at a time; returns how many."""
        def one(path) -> None:
            requests.post(self.url + "/instances", data=Path(path).read_bytes(), auth=self.auth,
                          timeout=120).raise_for_status()

        paths = list(paths)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, paths))
        return len(paths)
