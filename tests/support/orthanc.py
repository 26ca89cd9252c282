"""A real Orthanc PACS with its DICOMweb plugin on a loopback port, for the DICOMweb tests.

`Orthanc(folder)` writes a configuration (HTTP on a free loopback port, basic authentication on,
the DICOM port off, storage and index in `folder`) and `start()` runs Debian's `Orthanc` binary
with it until `stop()`. `ensure_installed()` installs the Debian packages `orthanc` and
`orthanc-dicomweb` when they are missing and this process may (root with apt-get); otherwise the
caller skips with its message. `.ci/run` installs them, so CI always runs these tests.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

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


def ensure_installed() -> str:
    """"" when Orthanc and its DICOMweb plugin are there (installing them if this process can);
    else why not, for a skip message."""
    if installed():
        return ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return ("Orthanc is not installed and cannot be installed here (needs root and apt-get): "
                "apt-get install orthanc orthanc-dicomweb")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "-q", "orthanc", "orthanc-dicomweb"], env=env,
                          capture_output=True, text=True, timeout=900)
    if not installed():
        return f"apt-get install orthanc orthanc-dicomweb failed: {done.stderr[-500:]}"
    return ""


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
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/system", auth=self.auth, timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- its REST API, for loading and checking ---------------------------------------------------
    def upload(self, paths) -> int:
        """Store DICOM files through Orthanc's REST API; returns how many."""
        n = 0
        with requests.Session() as s:
            s.auth = self.auth
            for path in paths:
                r = s.post(self.url + "/instances", data=Path(path).read_bytes(), timeout=60)
                r.raise_for_status()
                n += 1
        return n

    def get(self, path: str, **kw):
        r = requests.get(self.url + path, auth=self.auth, timeout=60, **kw)
        r.raise_for_status()
        return r.json()

    def delete(self, path: str) -> None:
        requests.delete(self.url + path, auth=self.auth, timeout=60).raise_for_status()

    def datasets_of_modality(self, modality: str) -> list:
        """Every stored instance of series of that modality, as pydicom datasets (whole files)."""
        import io

        import pydicom

        out = []
        for series in self.get("/series", params={"expand": ""}):
            if series["MainDicomTags"].get("Modality") == modality:
                for iid in series["Instances"]:
                    r = requests.get(f"{self.url}/instances/{iid}/file", auth=self.auth, timeout=60)
                    r.raise_for_status()
                    out.append(pydicom.dcmread(io.BytesIO(r.content)))
        return out

    def replace_instance(self, sop_instance_uid: str, data: bytes) -> None:
        """Delete the instance with that SOP Instance UID and store `data` (another instance)."""
        found = requests.post(f"{self.url}/tools/lookup", data=sop_instance_uid, auth=self.auth, timeout=60).json()
        (iid,) = [f["ID"] for f in found if f["Type"] == "Instance"]
        self.delete(f"/instances/{iid}")
        requests.post(self.url + "/instances", data=data, auth=self.auth, timeout=60).raise_for_status()
