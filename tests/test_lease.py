"""One writer per output (unet_core/io/lease.py), locally and on the S3 server (moto, with its
conditional writes): a live lease refuses a second run naming its holder; of runs that start
together exactly one wins; staleness is the heartbeat's age on the store's clock, whatever the
hosts' clocks say; a process id of another PID namespace (a container with the same host name)
never makes a live lease look gone; a lease that cannot be read is never "no lease"; and a run
whose lease was taken over fails its next check."""
from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from unet_core.errors import ConfigError, StorageError
from unet_core.io import lease as lease_mod
from unet_core.io import storage
from unet_core.io.lease import LEASE_FILE, Lease, LeaseLost, pid_namespace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(lease_mod.__file__))))
OTHER_CONTAINER = "00000000-0000-0000-0000-000000000000/4026531836"  # another boot / PID namespace


def test_a_second_writer_is_refused_with_who_holds_it(store):
    with Lease(store, "unet segment"):
        assert storage.exists(storage.join(store, LEASE_FILE))
        with pytest.raises(ConfigError, match=r"being written by another run: unet segment of .* on .* \(process"):
            Lease(store, "unet segment").acquire()
    assert not storage.exists(storage.join(store, LEASE_FILE))  # released
    with Lease(store, "unet segment"):  # free again
        pass


def test_the_heartbeat_keeps_a_lease_live(tmp_path):
    lease = Lease(str(tmp_path), "unet segment", stale_seconds=0.6, heartbeat_seconds=0.1).acquire()
    try:
        time.sleep(1.0)  # longer than stale: only the heartbeat keeps it
        with pytest.raises(ConfigError):
            Lease(str(tmp_path), "unet prepare", stale_seconds=0.6).acquire()
        lease.check()
    finally:
        lease.release()


def _plant(output: str, **kw) -> dict:
    """A lease as another run (another host or container, with its own clock) writes it."""
    info = {"job": "unet segment", "user": "someone", "host": "elsewhere", "pid": 1, "started": time.time(),
            "heartbeat": time.time(), "token": "0" * 32, "pid_namespace": OTHER_CONTAINER, "beat": 1, **kw}
    storage.write_bytes(storage.join(output, LEASE_FILE), json.dumps(info).encode())
    return info


def _age_on_the_store(output: str, seconds: float, stale: float) -> float:
    """Make the planted lease `seconds` old on the store's clock: a local file's modification time
    is set back; S3's LastModified cannot be, so the test waits (stale is then short). Returns the
    stale_seconds to use."""
    if storage.is_s3(output):
        time.sleep(stale + 1.1)  # LastModified and Date have whole seconds
        return stale
    path = storage.resolve(storage.join(output, LEASE_FILE))[1]
    os.utime(path, (time.time() - seconds, time.time() - seconds))
    return seconds - 10


def test_a_lease_is_stale_by_the_stores_clock_not_the_holders(store):
    """The holder's host clock runs an hour ahead: its heartbeat field says "just now" for an hour.
    The store says when the lease was last written, and the lease is taken over."""
    _plant(store, heartbeat=time.time() + 3600, started=time.time() + 3500)
    stale = _age_on_the_store(store, 500, 1.0)
    with Lease(store, "unet segment", stale_seconds=stale) as lease:
        assert lease.took_over is not None and lease.took_over.host == "elsewhere"
        assert lease.took_over.age is not None and lease.took_over.age >= stale
        assert f"last heartbeat {lease.took_over.age:.0f} s ago" in lease.took_over.describe()


def test_a_live_lease_is_respected_whatever_this_hosts_clock_says(store, monkeypatch):
    """The holder's clock runs an hour behind, and this host's an hour ahead: comparing the two
    would call a lease written a moment ago two hours old. The store's clock says it is live."""
    _plant(store, heartbeat=time.time() - 3600, started=time.time() - 3600)
    if not storage.is_s3(store):  # (the S3 server runs in this process: its clock would move too)
        real = time.time
        monkeypatch.setattr(lease_mod.time, "time", lambda: real() + 3600)
    with pytest.raises(ConfigError, match=r"being written by another run: .* on elsewhere .*last heartbeat [0-9] s"):
        Lease(store, "unet segment", stale_seconds=120).acquire()
    monkeypatch.undo()
    assert json.loads(storage.read_bytes(storage.join(store, LEASE_FILE)))["token"] == "0" * 32  # untouched


def test_a_pid_of_another_container_with_the_same_host_name_never_makes_a_live_lease_gone(tmp_path):
    """Two containers share a host name but not a PID namespace: the holder's process id, looked up
    here, is someone else's process (younger than the lease) or no process at all. Both were taken
    as "its process is gone" and a live lease was taken over; only the heartbeat's age counts."""
    younger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for pid in (younger.pid, _free_pid()):  # the process here is younger than the lease
            _plant(str(tmp_path), host=socket.gethostname(), pid=pid, started=time.time() - 5)
            with pytest.raises(ConfigError, match="being written by another run"):
                Lease(str(tmp_path), "unet segment").acquire()
    finally:
        younger.kill()
        younger.wait()


def test_a_lease_of_a_dead_process_of_this_namespace_is_taken_over_at_once(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    _plant(str(tmp_path), host=socket.gethostname(), pid=proc.pid, started=time.time() - 5,
           pid_namespace=pid_namespace())
    with Lease(str(tmp_path), "unet segment") as lease:
        assert lease.took_over is not None and lease.took_over.pid == proc.pid
    _plant(str(tmp_path), host=socket.gethostname(), pid=proc.pid, started=time.time() - 5, pid_namespace="")
    with pytest.raises(ConfigError):  # a lease that does not say its namespace (an older run's): heartbeat only
        Lease(str(tmp_path), "unet segment").acquire()


HOLDER = """
import sys, time
from unet_core.io import lease
lease.pid_namespace = lambda: {ns!r}  # as another container sees itself
held = lease.Lease(sys.argv[1], "unet segment", heartbeat_seconds=0.2)
held.info.pid = {pid}  # its process id there
held.acquire()
print("held", flush=True)
time.sleep(60)
"""


@pytest.mark.e2e
def test_a_live_run_in_another_container_keeps_its_lease_until_its_heartbeat_stops(tmp_path):
    """A real second process, as a run in another PID namespace: its lease is refused while it beats
    (its pid here is no process), and taken over once killed and stale on the store's clock."""
    out = str(tmp_path / "out")
    code = HOLDER.format(ns=OTHER_CONTAINER, pid=_free_pid())
    holder = subprocess.Popen([sys.executable, "-c", code, out], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(1.0)
        with pytest.raises(ConfigError, match=r"process \d+"):
            Lease(out, "unet segment", stale_seconds=0.8).acquire()  # the heartbeat keeps it younger than 0.8 s
    finally:
        holder.kill()
        holder.wait()
    time.sleep(1.0)
    with Lease(out, "unet segment", stale_seconds=0.8) as lease:
        assert lease.took_over is not None


@pytest.mark.parametrize("runs", [2, 6])
def test_of_runs_that_start_together_exactly_one_holds_the_lease(store, runs):
    """S3 has no atomic create but a conditional one (If-None-Match: *); locally link() fails on an
    existing name. Started at one barrier, exactly one run wins."""
    barrier = threading.Barrier(runs)
    won, refused, other = [], [], []

    def run() -> None:
        lease = Lease(store, "unet segment")
        barrier.wait()
        try:
            won.append(lease.acquire())
        except ConfigError:
            refused.append(lease)
        except Exception as exc:  # noqa: BLE001 - the test reports any other outcome
            other.append(exc)

    threads = [threading.Thread(target=run) for _ in range(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert (len(won), len(refused), other) == (1, runs - 1, [])
        seen = json.loads(storage.read_bytes(storage.join(store, LEASE_FILE)))
        assert seen["token"] == won[0].info.token
        won[0].check()
    finally:
        for lease in won:
            lease.release()


def test_a_lease_that_cannot_be_read_is_never_taken_for_none(tmp_path):
    out = tmp_path / "out"
    (out / LEASE_FILE).mkdir(parents=True)  # unreadable as a file
    with pytest.raises(StorageError, match=rf"{LEASE_FILE}: the lease could not be read \(IsADirectoryError\)"):
        Lease(str(out), "unet segment").acquire()
    (out / LEASE_FILE).rmdir()
    (out / LEASE_FILE).write_bytes(b"\x00 half-written {")
    with pytest.raises(ConfigError, match=r"is not a lease this tool can read.*nothing was changed"):
        Lease(str(out), "unet segment").acquire()
    assert (out / LEASE_FILE).read_bytes() == b"\x00 half-written {"


class _Failing(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint that answers 500 to everything, and notes what it was asked."""

    asked: list[str] = []

    def _fail(self) -> None:
        type(self).asked.append(self.command)
        self.send_response(500)
        self.send_header("Content-Type", "application/xml")
        body = b"<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _fail

    def log_message(self, *args) -> None:
        pass


def test_an_s3_error_reading_the_lease_is_never_taken_for_none(s3_server, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setattr(storage, "RETRY_ATTEMPTS", 2)  # retried as any storage read: fewer, for a short test
        _Failing.asked.clear()
        with pytest.raises(StorageError, match=r"the lease could not be read \(InternalError\); nothing was changed"):
            Lease("s3://bucket/out", "unet segment").acquire()
        assert _Failing.asked and set(_Failing.asked) == {"GET"}  # read (with retries), never written
    finally:
        server.shutdown()
        server.server_close()


def test_a_short_outage_of_the_store_does_not_fail_a_lease_check(s3_server, work_bucket, monkeypatch):
    """Every volume task reads the lease before it writes (Fence.check): a store that drops its
    connections for a second is retried like any read, not a failed job (CI once saw a 3-second
    outage end a run with exit 1 through this read)."""
    from support.faultproxy import FaultProxy

    with Lease(f"s3://{work_bucket}/blip/out", "unet segment") as held, \
            FaultProxy(int(s3_server.rsplit(":", 1)[1])) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        fence = held.fence()
        proxy.down = True
        back = threading.Timer(1.0, lambda: setattr(proxy, "down", False))
        back.start()
        try:
            fence.check()  # retried through the outage: the lease is still this run's
        finally:
            back.cancel()
        assert proxy.failed > 0 and not proxy.down
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)


def test_a_run_whose_lease_was_taken_over_fails_its_next_check(store):
    first = Lease(store, "unet segment", stale_seconds=1.0, heartbeat_seconds=3600, confirm_seconds=0).acquire()
    fence = first.fence()
    first.check()
    fence.check()
    time.sleep(2.1 if storage.is_s3(store) else 1.1)  # its heartbeat stalled (a paused VM, a partition)
    second = Lease(store, "unet segment", stale_seconds=1.0).acquire()
    try:
        assert second.took_over is not None and second.took_over.token == first.info.token
        with pytest.raises(LeaseLost, match=r"another run took the output over \(unet segment of"):
            first.check()
        with pytest.raises(LeaseLost):
            fence.check()  # the same answer in a Ray task
        assert first.lost
        first.release()  # never removes the lease it lost
        second.check()
        assert json.loads(storage.read_bytes(storage.join(store, LEASE_FILE)))["token"] == second.info.token
    finally:
        second.release()


def test_the_heartbeat_notices_a_lost_lease_and_the_run_stops(tmp_path):
    """The heartbeat's conditional write fails once the lease is another run's: the flag is set, and
    the next check raises without reading anything."""
    lease = Lease(str(tmp_path), "unet segment", heartbeat_seconds=0.1, confirm_seconds=3600).acquire()
    try:
        _plant(str(tmp_path))  # another run's lease where ours was
        deadline = time.monotonic() + 5
        while not lease.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lease.lost
        with pytest.raises(LeaseLost, match="another run took the output over"):
            lease.check()
    finally:
        lease.release()
    assert json.loads((tmp_path / LEASE_FILE).read_bytes())["token"] == "0" * 32  # theirs stays


def test_a_removed_lease_fails_the_check_and_an_unheld_one_is_refused(store):
    with pytest.raises(LeaseLost, match="does not hold the lease"):
        Lease(store, "unet segment").check()
    lease = Lease(store, "unet segment", heartbeat_seconds=3600, confirm_seconds=0).acquire()
    try:
        storage.delete(storage.join(store, LEASE_FILE))
        with pytest.raises(LeaseLost, match="was removed"):
            lease.check()
        with pytest.raises(LeaseLost, match="was removed"):
            lease.fence().check()
    finally:
        lease.release()


def _free_pid() -> int:
    """A process id that no process has here."""
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_a_fence_is_made_from_the_output_and_the_token_alone(store):
    from unet_core.io.lease import Fence

    with Lease(store, "unet segment") as lease:
        Fence.of(store, lease.info.token).check()
        with pytest.raises(LeaseLost, match="another run took the output over"):
            Fence.of(store, "f" * 32).check()


def test_a_write_that_landed_without_its_answer_is_still_ours(tmp_path):
    """A retried conditional write whose first try landed is refused (the version moved): the lease
    holding this run's own token is still this run's, at acquire and at a heartbeat."""
    lease = Lease(str(tmp_path), "unet segment", heartbeat_seconds=0.1, confirm_seconds=0)
    storage.write_bytes(storage.join(str(tmp_path), LEASE_FILE), lease.info.to_json())  # the create landed
    lease.acquire()
    try:
        assert lease.took_over is None
        storage.write_bytes(storage.join(str(tmp_path), LEASE_FILE), lease.info.to_json())  # a heartbeat landed
        beat = lease.info.beat
        time.sleep(0.6)
        assert not lease.lost and lease.info.beat > beat + 1
        lease.check()
    finally:
        lease.release()
    assert not (tmp_path / LEASE_FILE).exists()


def test_a_run_whose_heartbeat_stopped_fails_its_check_before_anyone_takes_over(tmp_path):
    """No heartbeat written for STALE_SECONDS: another run may take the output over at any moment,
    so the check fails even while the lease still reads as this run's."""
    lease = Lease(str(tmp_path), "unet segment", stale_seconds=0.5, heartbeat_seconds=3600).acquire()
    try:
        lease.check()
        time.sleep(0.6)
        with pytest.raises(LeaseLost, match=r"no heartbeat could be written for \d+ s"):
            lease.check()
        assert json.loads((tmp_path / LEASE_FILE).read_bytes())["token"] == lease.info.token
    finally:
        lease.release()
