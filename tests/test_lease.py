"""One writer per output (unet_core/io/lease.py): a live lease refuses a second run naming its
holder, a stale one or one whose process is gone is taken over, the heartbeat keeps it live, and
the lease goes when the run ends; locally and on the S3 server."""
from __future__ import annotations

import json
import time

import pytest

from unet_core.errors import ConfigError
from unet_core.io import storage
from unet_core.io.lease import LEASE_FILE, Lease


def test_a_second_writer_is_refused_with_who_holds_it(store):
    with Lease(store, "unet segment", settle_seconds=0.05):
        assert storage.exists(storage.join(store, LEASE_FILE))
        with pytest.raises(ConfigError, match=r"being written by another run: unet segment of .* on .* \(process"):
            Lease(store, "unet segment", settle_seconds=0.05).acquire()
    assert not storage.exists(storage.join(store, LEASE_FILE))  # released
    with Lease(store, "unet segment", settle_seconds=0.05):  # free again
        pass


def test_the_heartbeat_keeps_a_lease_live(tmp_path):
    lease = Lease(str(tmp_path), "unet segment", stale_seconds=0.6, heartbeat_seconds=0.1).acquire()
    try:
        time.sleep(1.0)  # longer than stale: only the heartbeat keeps it
        with pytest.raises(ConfigError):
            Lease(str(tmp_path), "unet prepare", stale_seconds=0.6).acquire()
    finally:
        lease.release()


def _plant(output: str, **kw) -> None:
    info = {"job": "unet segment", "user": "someone", "host": "elsewhere", "pid": 1, "started": time.time(),
            "heartbeat": time.time(), "token": "0" * 32, **kw}
    storage.write_bytes(storage.join(output, LEASE_FILE), json.dumps(info).encode())


def test_a_stale_lease_is_taken_over_and_said(store):
    _plant(store, heartbeat=time.time() - 500)
    with Lease(store, "unet segment", settle_seconds=0.05) as lease:
        assert lease.took_over is not None and lease.took_over.host == "elsewhere"
        assert "last heartbeat 50" in lease.took_over.describe(time.time())


def test_a_lease_of_a_dead_local_process_is_taken_over_at_once(tmp_path):
    import socket
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    _plant(str(tmp_path), host=socket.gethostname(), pid=proc.pid, started=time.time() - 5)
    with Lease(str(tmp_path), "unet segment") as lease:
        assert lease.took_over is not None
    _plant(str(tmp_path), host="elsewhere")  # a live lease of another host is respected
    with pytest.raises(ConfigError):
        Lease(str(tmp_path), "unet segment").acquire()
