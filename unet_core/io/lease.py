"""One writer per output: a lease object under the output that a job holds while it runs.

    with Lease(output, "unet segment"):   # ConfigError when another run holds a live lease
        ...

The lease (`.unet-lease.json`: job, user, host, process, start time, heartbeat, a random token)
is rewritten every HEARTBEAT_SECONDS by a background thread and removed at the end. A lease
without a heartbeat for STALE_SECONDS belongs to a run that is gone (killed, its machine lost):
the next run takes it over and says so; so does a run on the same host when the holder's process
is no longer running (a killed run is resumed at once). Object stores have no atomic create, so after writing its
lease a run reads it back once a moment later: of two runs that start together, the one whose
token is not there refuses.
"""
from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

import psutil

from unet_core.errors import ITEM_ERRORS, ConfigError
from unet_core.io import storage

log = logging.getLogger(__name__)

LEASE_FILE = ".unet-lease.json"
HEARTBEAT_SECONDS = 20.0
STALE_SECONDS = 120.0
SETTLE_SECONDS = 1.0  # between writing a lease and reading it back


@dataclass
class LeaseInfo:
    job: str
    user: str
    host: str
    pid: int
    started: float
    heartbeat: float
    token: str

    def describe(self, now: float) -> str:
        return (f"{self.job} of {self.user} on {self.host} (process {self.pid}, started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(self.started))}, last heartbeat "
                f"{now - self.heartbeat:.0f} s ago)")


class Lease:
    def __init__(self, output: str, job: str, stale_seconds: float = STALE_SECONDS,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS, settle_seconds: float = SETTLE_SECONDS):
        self.uri = storage.join(output, LEASE_FILE)
        self.output, self.stale, self.every, self.settle = output, stale_seconds, heartbeat_seconds, settle_seconds
        now = time.time()
        self.info = LeaseInfo(job, _user(), socket.gethostname(), os.getpid(), now, now, uuid.uuid4().hex)
        self.took_over: LeaseInfo | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> LeaseInfo | None:
        try:
            return LeaseInfo(**json.loads(storage.read_bytes(self.uri)))
        except ITEM_ERRORS:
            return None
        except (ValueError, TypeError):  # not a lease of this tool's format: treated as none
            return None

    def _write(self) -> None:
        self.info.heartbeat = time.time()
        storage.write_bytes(self.uri, json.dumps(asdict(self.info)).encode())

    def _refuse(self, holder: LeaseInfo) -> ConfigError:
        return ConfigError(
            f"{self.output} is being written by another run: {holder.describe(time.time())}. Wait for it to "
            f"finish, or, if it is gone, run again after {self.stale:.0f} s without a heartbeat (or remove "
            f"{self.uri})")

    def acquire(self) -> Lease:
        holder = self.read()
        if holder is not None and holder.token != self.info.token:
            if time.time() - holder.heartbeat < self.stale and not _gone(holder):
                raise self._refuse(holder)
            self.took_over = holder
        if holder is None and not storage.is_s3(self.uri):
            if not self._create_local():  # O_EXCL: of two runs exactly one creates it
                raise self._refuse(self.read() or self.info)
        else:
            self._write()
            time.sleep(self.settle)
            now = self.read()
            if now is not None and now.token != self.info.token:  # another run wrote its lease at the same time
                raise self._refuse(now)
        self._thread = threading.Thread(target=self._beat, name="unet-lease", daemon=True)
        self._thread.start()
        return self

    def _create_local(self) -> bool:
        path = storage.resolve(self.uri)[1]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self.info), f)
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            try:
                holder = self.read()
                if holder is not None and holder.token != self.info.token:
                    log.error("%s: another run took the lease over (%s); this run's outputs may be mixed with "
                              "it", self.output, holder.describe(time.time()))
                    return
                self._write()
            except Exception:  # noqa: BLE001 - a missed heartbeat is retried; the job goes on
                log.warning("%s: the lease heartbeat could not be written; retrying", self.output, exc_info=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self.read()
        if holder is not None and holder.token == self.info.token:
            storage.delete(self.uri)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _gone(holder: LeaseInfo) -> bool:
    """The holder ran on this host and its process is no longer there (or is another process)."""
    if holder.host != socket.gethostname():
        return False
    try:
        return psutil.Process(holder.pid).create_time() > holder.started + 1.0
    except psutil.NoSuchProcess:
        return True


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return f"uid {os.getuid()}"
