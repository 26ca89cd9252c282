"""The tests' Orthanc (jobs/bench/orthanc.py starts it), and their helpers: installing it when it
is missing and this process may (root with apt-get; otherwise the caller skips with the message),
reading what it stores, replacing an instance. `.ci/run` installs it, so CI always runs these tests.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import requests

from jobs.bench import orthanc as launcher
from jobs.bench.orthanc import PASSWORD, USER, installed  # the tests' credentials

__all__ = ["PASSWORD", "USER", "Orthanc", "ensure_installed"]


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


class Orthanc(launcher.Orthanc):
    # ---- its REST API, for loading and checking ---------------------------------------------------
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
