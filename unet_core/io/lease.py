"""One writer per output: a lease object under the output that a job holds while it runs.

    with Lease(output, "unet segment") as lease:   # ConfigError when another run holds a live lease
        lease.check()            # before each delete, table-part rewrite and send: LeaseLost if lost
        fence = lease.fence()    # the same check for Ray tasks (a small picklable value)

The lease (`.unet-lease.json`: job, user, host, process, start time, a random token) is written
with conditional writes only, so that of two runs exactly one holds it:
- created only where none exists: S3 `PutObject` with `If-None-Match: *`; a local file is
  published with `link()`, which fails when the name exists;
- renewed every HEARTBEAT_SECONDS, and taken over, only over the version that was read: S3
  `If-Match: <ETag>`; locally a check and an atomic rename under a lock of the output folder.
A lease is stale when the store says it was last written STALE_SECONDS ago, measured on the
store's own clock (S3: the answer's `Date` against the object's `LastModified`; locally the
modification time of a file written now against the lease's), never by comparing the clocks of two
hosts. A lease whose process ran in this very PID namespace (same boot, same namespace) and is gone
is taken over at once (a killed run resumes); a PID of another container means nothing here, so
only the heartbeat's age counts for it. A lease that cannot be read (a store error, a file that is
not a lease) is never read as "no lease": the run stops and says so.

A run that loses its lease (another run took it over after its heartbeats failed, or it was
removed) must stop writing: the heartbeat thread sets a flag that `check()` raises on (LeaseLost),
and the job checks before each delete, part rewrite and send. A store that ignores conditional
writes cannot give this guarantee: AWS S3, MinIO and moto honour them.
"""
from __future__ import annotations

import contextlib
import email.utils
import fcntl
import functools
import getpass
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields

import psutil
from botocore.exceptions import BotoCoreError, ClientError

from unet_core.errors import ConfigError, StorageError
from unet_core.io import storage

log = logging.getLogger(__name__)

LEASE_FILE = ".unet-lease.json"
HEARTBEAT_SECONDS = 20.0
STALE_SECONDS = 120.0
TEMPORARY = ".tmp-lease-"  # swept like every unfinished temporary (ownership.sweep_temporaries)


_S3_ERRORS = (ClientError, BotoCoreError)


class LeaseLost(ConfigError):
    """This run no longer holds its output's lease (another run took it over, or it was removed):
    it must not delete, rewrite or send anything more. Exit 2, like a refused second run."""


@dataclass
class LeaseInfo:
    """What a lease object holds. `heartbeat` is the holder's own clock, shown, never compared;
    `age` is measured on the store's clock when read (not stored)."""

    job: str
    user: str
    host: str
    pid: int
    started: float
    heartbeat: float
    token: str
    pid_namespace: str = ""  # "<boot id>/<pid namespace inode>": where `pid` means something
    beat: int = 0
    age: float | None = field(default=None, compare=False)

    def to_json(self) -> bytes:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "age"}).encode()

    @classmethod
    def from_json(cls, data: bytes, uri: str) -> LeaseInfo:
        try:
            d = json.loads(data)
            names = {f.name for f in fields(cls)} - {"age"}
            return cls(**{k: v for k, v in d.items() if k in names})
        except (ValueError, TypeError, AttributeError):
            raise ConfigError(
                f"{uri} is not a lease this tool can read, so whether another run is writing the output is "
                "unknown: nothing was changed. If no run is writing it, remove that file and run again") from None

    def describe(self, now: float | None = None) -> str:
        """`now` (this host's clock) is used only when the store's age is unknown."""
        age = self.age if self.age is not None else (now or time.time()) - self.heartbeat
        return (f"{self.job} of {self.user} on {self.host} (process {self.pid}, started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(self.started))}, last heartbeat "
                f"{age:.0f} s ago)")


@dataclass(frozen=True)
class Seen:
    """A lease as read: its content, and the version a conditional write must name."""

    info: LeaseInfo
    version: str


class _S3Lease:
    """The lease object on S3, through boto3 (conditional writes are not in pyarrow's API)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.bucket, _, self.key = uri[len("s3://"):].partition("/")

    def _fail(self, exc: Exception, action: str) -> StorageError:
        return StorageError(f"{self.uri}: the lease could not be {action} ({_code(exc) or type(exc).__name__}); "
                            "nothing was changed. Check the store and its credentials, and run again", uri=self.uri)

    def read(self, age: bool = True) -> Seen | None:
        """None only when S3 says there is no such key; any other failure raises StorageError. The
        age comes with the answer, so `age` changes nothing here."""
        def get() -> tuple[dict, bytes] | None:
            try:
                got = _s3_client(attempts=1).get_object(Bucket=self.bucket, Key=self.key)
                return got, got["Body"].read()
            except _S3_ERRORS as exc:  # only "no such key" means no lease
                if _code(exc) in ("NoSuchKey", "404"):
                    return None
                raise

        # A read changes nothing, so a dropped connection or a 503 is retried like any storage read
        # (storage.with_retry's classification and attempts): a short outage of the store must not
        # stop a run whose every task reads the lease before it writes (Fence.check).
        answer = storage.with_retry(get, self.uri, "read", classify=lambda exc, uri, action: self._fail(exc, action))
        if answer is None:
            return None
        got, body = answer
        info = LeaseInfo.from_json(body, self.uri)
        date = got["ResponseMetadata"]["HTTPHeaders"].get("date")
        if date:  # the store's clock: its answer's Date against the object's LastModified (both its own)
            info.age = max(0.0, (email.utils.parsedate_to_datetime(date) - got["LastModified"]).total_seconds())
        return Seen(info, got["ETag"])

    def _put(self, data: bytes, **condition: str) -> str | None:
        try:
            return _s3_client().put_object(Bucket=self.bucket, Key=self.key, Body=data, **condition)["ETag"]
        except _S3_ERRORS as exc:  # a failed precondition is an answer, not an error
            if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"):
                return None
            raise self._fail(exc, "written") from None

    def create(self, data: bytes) -> str | None:
        return self._put(data, IfNoneMatch="*")

    def replace(self, data: bytes, version: str) -> str | None:
        return self._put(data, IfMatch=version)

    def delete(self, version: str) -> None:
        try:
            try:
                _s3_client().delete_object(Bucket=self.bucket, Key=self.key, IfMatch=version)
            except ClientError as exc:
                if _code(exc) not in ("NotImplemented", "501", "InvalidArgument"):
                    raise
                # A store without conditional deletes: the lease was ours when release() read it
                # just now, and a takeover needs it stale for STALE_SECONDS.
                _s3_client().delete_object(Bucket=self.bucket, Key=self.key)
        except _S3_ERRORS as exc:  # a lease that changed is not ours to remove
            if _code(exc) not in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                log.warning("%s: the lease could not be removed (%s); the next run takes it over once stale",
                            self.uri, _code(exc) or type(exc).__name__)


class _LocalLease:
    """The lease file of a local output; writes under an exclusive lock of the output folder."""

    def __init__(self, uri: str):
        self.uri = uri
        self.path = storage.resolve(uri)[1]
        self.folder = os.path.dirname(self.path)

    @contextlib.contextmanager
    def _locked(self):
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _store_now(self) -> float:
        """The store's clock: the modification time of a file written now (on a network
        filesystem the server sets it, as it set the lease's)."""
        fd, tmp = _temporary(self.folder)
        try:
            os.write(fd, b"clock")
            return os.fstat(fd).st_mtime
        finally:
            os.close(fd)
            os.unlink(tmp)

    def read(self, age: bool = True) -> Seen | None:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                body = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:  # unreadable (a folder, an I/O error): not "no lease"
            raise StorageError(f"{self.uri}: the lease could not be read ({type(exc).__name__}); nothing was "
                               "changed. Check the file, and run again", uri=self.uri) from None
        info = LeaseInfo.from_json(body, self.uri)
        if age:
            info.age = max(0.0, self._store_now() - st.st_mtime)
        return Seen(info, f"{st.st_ino}-{st.st_mtime_ns}")

    def _write_temporary(self, data: bytes) -> str:
        fd, tmp = _temporary(self.folder)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def create(self, data: bytes) -> str | None:
        with self._locked():
            tmp = self._write_temporary(data)
            try:
                os.link(tmp, self.path)  # fails when the name exists: an atomic create of a whole file
            except FileExistsError:
                return None
            finally:
                os.unlink(tmp)
            return self._version()

    def replace(self, data: bytes, version: str) -> str | None:
        with self._locked():
            if self._version() != version:
                return None
            os.replace(self._write_temporary(data), self.path)
            return self._version()

    def delete(self, version: str) -> None:
        with self._locked():
            if self._version() == version:
                os.unlink(self.path)

    def _version(self) -> str | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return f"{st.st_ino}-{st.st_mtime_ns}"


def _store(uri: str) -> _S3Lease | _LocalLease:
    if storage.is_s3(uri):
        return _S3Lease(uri)
    if storage.is_remote(uri):
        raise ConfigError(f"{uri}: an output lease needs a local folder or s3:// (conditional writes)")
    return _LocalLease(uri)


@dataclass(frozen=True)
class Fence:
    """The lease's token, checked against the store: for Ray tasks that delete, rewrite a table
    part or send on behalf of the run (they cannot see the driver's Lease)."""

    uri: str
    token: str

    @classmethod
    def of(cls, output: str, token: str) -> Fence:
        """The fence of `output`'s lease with the holder's token (a settings field can carry the
        token alone)."""
        return cls(storage.join(output, LEASE_FILE), token)

    def check(self) -> None:
        """Raises LeaseLost when the output's lease is no longer this run's, StorageError when it
        cannot be read (then nothing may be written either)."""
        store = _store(self.uri)
        seen = store.read(age=False)
        if seen is None or seen.info.token != self.token:
            raise LeaseLost(_lost_message(self.uri, seen.info if seen else None))


class Lease:
    def __init__(self, output: str, job: str, stale_seconds: float = STALE_SECONDS,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS, confirm_seconds: float | None = None):
        self.uri = storage.join(output, LEASE_FILE)
        self.output, self.stale, self.every = output, stale_seconds, heartbeat_seconds
        self.confirm = heartbeat_seconds if confirm_seconds is None else confirm_seconds
        self._store = _store(self.uri)
        now = time.time()
        self.info = LeaseInfo(job, _user(), socket.gethostname(), os.getpid(), now, now, uuid.uuid4().hex,
                              pid_namespace())
        self.took_over: LeaseInfo | None = None
        self._version: str | None = None
        self._written = self._checked = 0.0  # time.monotonic() of the last write / read that confirmed it
        self._lost = threading.Event()
        self._lost_why = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> LeaseInfo | None:
        """The lease now under the output; None only when there is none (errors raise)."""
        seen = self._store.read()
        return seen.info if seen else None

    def _payload(self) -> bytes:
        self.info.heartbeat, self.info.beat = time.time(), self.info.beat + 1
        return self.info.to_json()

    def _refuse(self, holder: LeaseInfo) -> ConfigError:
        return ConfigError(
            f"{self.output} is being written by another run: {holder.describe()}. Wait for it to finish, or, if it "
            f"is gone, run again after {self.stale:.0f} s without a heartbeat (or remove {self.uri})")

    def _gone(self, holder: LeaseInfo) -> bool:
        if holder.age is not None and holder.age >= self.stale:
            return True
        return _process_gone(holder)

    def acquire(self) -> Lease:
        for _ in range(3):  # a lost race is read again: the winner's lease is then refused by name
            started = time.monotonic()
            seen = self._store.read()
            if seen is None:
                self._version = self._store.create(self._payload())
            elif seen.info.token == self.info.token:  # our write landed, its answer was lost (a retry got 412)
                self._version = seen.version
            elif self._gone(seen.info):
                self._version = self._store.replace(self._payload(), seen.version)
                if self._version is not None:
                    self.took_over = seen.info
            else:
                raise self._refuse(seen.info)
            if self._version is not None:
                break
        else:
            seen = self._store.read()
            raise self._refuse(seen.info if seen else self.info)
        self._written = self._checked = started
        self._thread = threading.Thread(target=self._beat, name="unet-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            started = time.monotonic()
            try:
                version = self._store.replace(self._payload(), self._version or "")
            except (StorageError, OSError) as exc:
                if started - self._written >= self.stale:
                    self._lose(f"no heartbeat could be written for {started - self._written:.0f} s, so another run "
                               "may have taken the output over")
                    return
                log.warning("%s: the lease heartbeat could not be written (%s); retrying", self.output, exc)
                continue
            if version is None:  # the version we wrote is not there any more
                try:
                    seen = self._store.read(age=False)
                except (StorageError, ConfigError):
                    seen = None
                if seen is not None and seen.info.token == self.info.token:
                    # Our write landed and its answer was lost: a retry of it found the new version.
                    self._version, self._written, self._checked = seen.version, started, started
                    continue
                self._lose(_lost_message(self.uri, seen.info if seen else None))
                return
            self._version, self._written, self._checked = version, started, started

    def _lose(self, why: str) -> None:
        self._lost_why = why
        self._lost.set()
        log.error("%s: this run lost its lease: %s; it stops writing", self.output, why)

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def check(self) -> None:
        """Before each delete, table-part rewrite and send: raises LeaseLost once the heartbeat
        thread found the lease gone, or once no heartbeat was written for STALE_SECONDS (another run
        may take it over at any moment then). At most every `confirm_seconds` it also reads the lease
        back (a lease removed by hand and created by another run is found here); a read that fails
        is not a loss by itself."""
        if self._thread is None:
            raise LeaseLost(f"{self.uri}: this run does not hold the lease (not acquired, or released)")
        if self._lost.is_set():
            raise LeaseLost(f"{self.output}: {self._lost_why}")
        started = time.monotonic()
        overdue = started - self._written >= self.stale  # measured from before the last write that landed
        if not overdue and started - self._checked < self.confirm:
            return
        try:
            holder = self._store.read(age=False)
        except (StorageError, ConfigError):
            holder, read = None, False
        else:
            read = True
        if read and (holder is None or holder.info.token != self.info.token):
            self._lose(_lost_message(self.uri, holder.info if holder else None))
        elif overdue:
            self._lose(f"no heartbeat could be written for {started - self._written:.0f} s, so another run may "
                       "take the output over")
        if self._lost.is_set():
            raise LeaseLost(f"{self.output}: {self._lost_why}")
        if read:
            self._checked = started

    def fence(self) -> Fence:
        return Fence(self.uri, self.info.token)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._version is None or self._lost.is_set():
            return
        with contextlib.suppress(StorageError, ConfigError, OSError):  # a lease left behind goes stale
            seen = self._store.read(age=False)
            if seen is not None and seen.info.token == self.info.token:
                self._store.delete(seen.version)
        self._thread = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _lost_message(uri: str, holder: LeaseInfo | None) -> str:
    if holder is None:
        return f"{uri} was removed"
    return f"another run took the output over ({holder.describe()})"


@functools.lru_cache(maxsize=1)
def pid_namespace() -> str:
    """Where a process id means this process table: the boot and the PID namespace. Two containers
    with one host name differ here; "" where unknown (then no process is ever judged gone)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def _process_gone(holder: LeaseInfo) -> bool:
    """The holder ran in this PID namespace and its process is no longer there (or the id is now
    another process's). A lease from another namespace (container) says nothing about ours."""
    if not holder.pid_namespace or holder.pid_namespace != pid_namespace() or holder.host != socket.gethostname():
        return False
    try:
        return psutil.Process(holder.pid).create_time() > holder.started + 1.0
    except psutil.NoSuchProcess:
        return True


def _temporary(folder: str) -> tuple[int, str]:
    path = os.path.join(folder, f"{TEMPORARY}{uuid.uuid4().hex[:12]}")
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), path


def _code(exc: Exception) -> str:
    """An S3 error's code (botocore's), or its HTTP status; "" for anything else."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode")
               or "")


@functools.lru_cache(maxsize=4)
def _client(endpoint: str | None, region: str, attempts: int):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name=region,
                        config=Config(retries={"max_attempts": attempts, "mode": "standard"}, connect_timeout=5,
                                      read_timeout=30))


def _s3_client(attempts: int = 3):
    """botocore's own retries for the conditional writes; reads pass 1 (storage.with_retry retries
    them, and one layer of retries is enough)."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return _client(storage.s3_endpoint(), region, attempts)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return f"uid {os.getuid()}"
