"""`unet submit`: run any job on a Ray cluster through the Ray Jobs API.

    unet submit [--address http://HEAD:8265] [--wait | --no-wait] -- <job> <job options>
    unet submit --status ID | --logs ID | --stop ID

The job's arguments are checked here first (a typo fails in a second, not after an upload). The
project's code travels as the job's working directory from a checkout, or, when installed as a
package, as exactly its own packages found through importlib.metadata; its dependencies come from the cluster image (cluster/Dockerfile, the default), from
this project's pinned requirements (`--packages pinned`) or from a container image (`--image`).
With --wait (the default) the job's logs stream here and `unet submit` exits with the job's own
exit status (so `segment`'s 3 for "some volumes failed" comes through), 1 when the job failed
without one (e.g. its environment could not be built), 4 when it was stopped.

Token authentication (clusters started with RAY_AUTH_MODE=token): the token is read from
RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token, and sent as a bearer
header. It is never printed, and never passed on to the job's environment.
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import importlib
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

import requests

from jobs.cli import JOBS
from jobs.exits import Exit, run_main
from jobs.output import configure as configure_output
from jobs.output import log, say
from jobs.quieting import quiet_library_loggers
from jobs.runtime import FORWARDED_STORAGE_ENV, forwarded_storage_env
from unet_core.errors import ConfigError
from unet_core.net import is_loopback

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
SECRET_NAMES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN", "DICOMWEB_TOKEN", "DICOMWEB_PASSWORD")
PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the checkout, or site-packages when installed
DIST_NAME = "unet-ray"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unet submit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default=None,
                   help="the cluster's Jobs API, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS, or RAY_ADDRESS "
                        f"when it is an http address, else {DEFAULT_ADDRESS})")
    wait = p.add_mutually_exclusive_group()
    wait.add_argument("--wait", dest="wait", action="store_true", default=True,
                      help="stream the job's logs and exit with its outcome (default)")
    wait.add_argument("--no-wait", dest="wait", action="store_false", help="print the submission ID and return")
    p.add_argument("--timeout", type=float, default=None, help="with --wait: give up waiting after this many seconds "
                                                              "(the job keeps running)")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--status", metavar="ID", help="print a submitted job's status and exit with its outcome")
    act.add_argument("--logs", metavar="ID", help="print a submitted job's logs so far")
    act.add_argument("--stop", metavar="ID", help="stop a submitted job")
    env = p.add_argument_group("the job's environment")
    env.add_argument("--packages", choices=["image", "pinned"], default="image",
                     help="image: the cluster's image has the dependencies (cluster/Dockerfile); pinned: install "
                          "this project's pinned requirements into the job's runtime environment")
    env.add_argument("--image", default=None, help="run the job in this container image (Ray's image_uri runtime env)")
    env.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                     help="set an environment variable for the job; NAME alone forwards this shell's value. "
                          f"Forwarded when set: {', '.join(FORWARDED_STORAGE_ENV)}")
    env.add_argument("--working-dir", default=None,
                     help="the code to upload (default: this checkout; an installed package ships its own "
                          "packages, jobs and unet_core)")
    res = p.add_argument_group("resources of the job's driver (the entrypoint)")
    res.add_argument("--entrypoint-num-cpus", type=float, default=None)
    res.add_argument("--entrypoint-num-gpus", type=float, default=None)
    res.add_argument("--entrypoint-memory", type=int, default=None, help="bytes")
    p.add_argument("--submission-id", default=None, help="a name for the job (unique on the cluster)")
    p.add_argument("--insecure-http", action="store_true",
                   help="send the cluster token over plain http to a host that is not this machine (anyone on the "
                        "path can read it; use https:// instead wherever you can)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("job", nargs=argparse.REMAINDER, help="-- <job> <options>, e.g. -- segment --input s3://...")
    return p


# ---- connecting --------------------------------------------------------------------------------
def resolve_address(address: str | None) -> str:
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS")
    if not address:
        env = os.environ.get("RAY_ADDRESS", "")
        address = env if env.startswith(("http://", "https://")) else DEFAULT_ADDRESS
    if "://" not in address:
        address = f"http://{address}"
    if not address.startswith(("http://", "https://")):
        raise ConfigError(f"--address {address!r}: the Jobs API is an http(s) address such as http://HEAD:8265 "
                       "(ray:// and GCS addresses are for `--address` of the jobs themselves)")
    return address.rstrip("/")


def read_token() -> tuple[str | None, str]:
    """The cluster token and where it came from, looked up where Ray itself looks (docs/design.md, fact 5)."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token, "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read the token file ({exc.strerror})") from None
        if not token:
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH={path}: the token file is empty")
        return token, path
    default = Path("~/.ray/auth_token").expanduser()
    if default.is_file():
        return default.read_text().strip() or None, str(default)
    return None, ""


TOKEN_HELP = ("set RAY_AUTH_TOKEN to the cluster's token (or RAY_AUTH_TOKEN_PATH to a file holding it, or put it in "
              "~/.ray/auth_token); on KubeRay it is in the cluster's Secret, see cluster/README.md")


@dataclass
class Cluster:
    """A Jobs API client and what is needed to explain its failures."""

    client: object
    address: str
    token_source: str | None  # where the token came from; None when none was sent

    def call(self, fn, *a, **kw):
        """One Jobs API call with the same clear errors as `connect`."""
        from ray.exceptions import AuthenticationError

        try:
            return fn(*a, **kw)
        except AuthenticationError as exc:
            raise auth_error(self.address, exc, self.token_source) from None
        except (ConnectionError, requests.exceptions.RequestException) as exc:
            raise ConfigError(f"lost the Ray Jobs API at {self.address}: {first_line(exc)}") from None
        except RuntimeError as exc:  # the SDK's way of saying "HTTP error" (e.g. no such job)
            raise ConfigError(f"{self.address}: {first_line(exc)}") from None


def check_transport(address: str, has_token: bool, insecure_http: bool) -> None:
    """A token goes over https, or plain http to this machine; anything else only with
    --insecure-http."""
    if has_token and address.startswith("http://") and not is_loopback(address) and not insecure_http:
        raise ConfigError(f"refusing to send the cluster token over plain http to {urlsplit(address).hostname}: "
                          "anyone on the path could read it. Use an https:// address (a TLS proxy in front of the "
                          "dashboard, or `kubectl port-forward` to 127.0.0.1), or pass --insecure-http if this "
                          "network is yours")


def connect(address: str, verbose: bool = False, insecure_http: bool = False) -> Cluster:
    """A client of the cluster's Jobs API, or a ConfigError that says what is wrong and what to do."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    quiet_library_loggers(verbose)
    token, source = read_token()
    check_transport(address, bool(token), insecure_http)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return Cluster(JobSubmissionClient(address, headers=headers), address, source if token else None)
    except AuthenticationError as exc:
        raise auth_error(address, exc, source if token else None) from None
    except (ConnectionError, requests.exceptions.RequestException) as exc:
        raise ConfigError(f"cannot reach the Ray Jobs API at {address}: {first_line(exc)}. Is the head running, and is "
                       "its dashboard port (8265) reachable from here (e.g. `kubectl port-forward "
                       "svc/<cluster>-head-svc 8265:8265`)? Pass --address or set RAY_API_SERVER_ADDRESS") from None


def auth_error(address: str, exc: Exception, source: str | None) -> ConfigError:
    text = str(exc)
    if source and ("403" in text or "Forbidden" in text or "invalid" in text.lower()):
        return ConfigError(f"the cluster at {address} rejected the token from {source}: it is not the token the cluster "
                        f"was started with; {TOKEN_HELP}")
    return ConfigError(f"the cluster at {address} requires an authentication token and none was found; {TOKEN_HELP}")


def first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# ---- what is submitted ---------------------------------------------------------------------------
def check_job_args(job_argv: list[str]) -> None:
    """Parse the job's options with the job's own parser before anything is uploaded."""


    if not job_argv:
        raise ConfigError("nothing to submit: give the job after `--`, e.g. `unet submit -- segment --input ... "
                       "--model ... --output ...`")
    job, rest = job_argv[0], job_argv[1:]
    if job not in JOBS or job == "submit":
        raise ConfigError(f"{job!r} is not a job that can be submitted; one of: "
                       f"{', '.join(j for j in JOBS if j != 'submit')}")
    if "--config" in rest or any(a.startswith("--config=") for a in rest):
        log.info("the job reads --config on the cluster; its options are checked there")
        return
    parser = importlib.import_module(f"jobs.{job}").build_parser()
    parser.prog = f"unet submit -- {job}"
    parser.parse_args(rest)  # exits 2 with the job's usage on a bad option, before any upload


def entrypoint(job_argv: list[str]) -> str:
    return shlex.join(["python", "-m", "jobs.cli", *job_argv])


def source_checkout() -> Path | None:
    """The checkout this code runs from (its pyproject.toml names this project), or None when the
    code is an installed package: then the folder above `jobs/` is site-packages, which must never
    be uploaded (it holds TensorFlow and everything else installed there)."""

    pyproject = PROJECT_ROOT / "pyproject.toml"
    if not (pyproject.is_file() and (PROJECT_ROOT / "jobs" / "cli.py").is_file() and (PROJECT_ROOT / "unet_core").is_dir()):
        return None
    try:
        name = tomllib.loads(pyproject.read_text())["project"]["name"]
    except (OSError, ValueError, KeyError):
        return None
    return PROJECT_ROOT if name == DIST_NAME else None


def installed_packages() -> list[Path]:
    """The import packages the installed distribution holds (from its RECORD, through
    importlib.metadata): the folders `unet submit` ships as the job's Python modules."""

    try:
        dist = metadata.distribution(DIST_NAME)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"{DIST_NAME} is neither a source checkout nor an installed package here; give the code "
                          "with --working-dir") from None
    tops = sorted({f.parts[0] for f in dist.files or () if len(f.parts) > 1 and f.suffix == ".py"
                   and not f.parts[0].endswith((".dist-info", ".data"))})
    found = [Path(dist.locate_file(top)) for top in tops]
    found = [p for p in found if (p / "__init__.py").is_file()]
    if {p.name for p in found} != {"jobs", "unet_core"}:
        raise ConfigError(f"the installed {DIST_NAME} lists packages {[p.name for p in found]}, expected jobs and "
                          "unet_core; reinstall it, or give the code with --working-dir")
    return found


def pinned_requirements() -> list[str]:
    """The project's own dependency pins, minus Ray (the cluster's Ray must not be replaced): from
    pyproject.toml in a checkout, from the installed distribution's metadata otherwise. Extras
    (test, gpu, codecs) are not included."""

    if source_checkout() is not None:
        deps = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    else:
        # Requires-Dist lines; those of an extra carry the marker `extra == "..."`.
        deps = [d for d in metadata.requires(DIST_NAME) or () if "extra" not in d.partition(";")[2]]
    return [d for d in deps if re.match(r"[A-Za-z0-9._-]+", d.strip()).group(0).lower() != "ray"]


def job_env(pairs: list[str]) -> dict[str, str]:
    env = forwarded_storage_env()
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not name.isidentifier():
            raise ConfigError(f"--env {pair!r}: expected NAME or NAME=VALUE")
        if not sep:
            if name not in os.environ:
                raise ConfigError(f"--env {name}: not set in this shell")
            value = os.environ[name]
        if name == "RAY_AUTH_TOKEN":
            raise ConfigError("--env RAY_AUTH_TOKEN: the cluster's processes already hold the token; it is not passed on")
        if name in SECRET_NAMES:
            log.warning("--env %s: the value is visible to anyone who can read the job's runtime environment on the "
                        "cluster's dashboard; prefer IAM roles / service accounts, or a Kubernetes secret on the nodes "
                        "(cluster/README.md)", name)
        env[name] = value
    return env


# What a job needs of a checkout, and nothing else: a .env, scans, reports or models lying in the
# checkout never reach the cluster's package store (where anyone with dashboard access can
# download the package).
SHIPPED = ("pyproject.toml", "jobs/**/*.py", "unet_core/**/*.py", "unet_core/templates/*.j2")


def stage_checkout(code: Path) -> Path:
    """A temporary folder with exactly the SHIPPED files of a checkout (removed at exit)."""
    staged = Path(tempfile.mkdtemp(prefix="unet-submit-"))
    atexit.register(shutil.rmtree, staged, ignore_errors=True)
    for pattern in SHIPPED:
        for src in sorted(code.glob(pattern)):
            if src.is_file() and not src.is_symlink() and "__pycache__" not in src.parts:
                dst = staged / src.relative_to(code)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    return staged


def runtime_env(args: argparse.Namespace) -> dict:
    renv: dict = {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2", **job_env(args.env)}}
    code = Path(args.working_dir).resolve() if args.working_dir else source_checkout()
    if code is not None and (code / "jobs" / "cli.py").is_file() and (code / "unet_core").is_dir():
        renv["working_dir"] = str(stage_checkout(code))
    elif args.working_dir:
        raise ConfigError(f"--working-dir {code}: not this project (no jobs/cli.py and unet_core/ there)")
    else:  # installed as a package: ship exactly its own packages, found through its metadata
        renv["py_modules"] = [str(p) for p in installed_packages()]
    if args.packages == "pinned":
        renv["pip"] = {"packages": pinned_requirements(), "pip_check": False}
    if args.image:
        renv["image_uri"] = args.image
    return renv


# ---- following a job ------------------------------------------------------------------------------
def stream_logs(client, job_id: str) -> bool:
    """Print the job's log lines as they come; False if streaming is not possible (then poll)."""
    async def follow() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(follow())
        return True
    except Exception as exc:  # noqa: BLE001 - websocket refused by a proxy, dropped connection, ...
        log.warning("log streaming stopped (%s); polling the job's status instead", first_line(exc))
        return False


def wait_for(cluster: Cluster, job_id: str, timeout: float | None) -> int:
    client = cluster.client
    deadline = None if timeout is None else time.monotonic() + timeout
    streamed = timeout is None and stream_logs(client, job_id)
    while True:
        status = str(cluster.call(client.get_job_status, job_id).value)
        if not streamed and status in TERMINAL:
            sys.stdout.write(cluster.call(client.get_job_logs, job_id))
        if status in TERMINAL:
            return outcome(cluster.call(client.get_job_info, job_id))
        if deadline is not None and time.monotonic() > deadline:
            log.error("job %s still %s after %.0f s; it keeps running. Follow it with "
                      "`unet submit --status %s`, stop it with `unet submit --stop %s`", job_id, status, timeout,
                      job_id, job_id)
            return Exit.INTERNAL
        time.sleep(1.0)


def outcome(info) -> int:
    status = str(info.status.value)
    code = info.driver_exit_code
    if status == "SUCCEEDED":
        say(f"job {info.submission_id} SUCCEEDED")
        return Exit.OK
    if status == "STOPPED":
        log.error("job %s was STOPPED", info.submission_id)
        return Exit.STOPPED
    if status == "FAILED":
        message = (info.message or "").splitlines()[0] if info.message else ""
        log.error("job %s FAILED%s: %s", info.submission_id, f" with exit status {code}" if code else "", message)
        return code if code else Exit.INTERNAL
    say(f"job {info.submission_id} is {status}")
    return Exit.OK


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    configure_output(args.verbose)
    job_argv = args.job[1:] if args.job[:1] == ["--"] else args.job
    address = resolve_address(args.address)
    if not (args.status or args.logs or args.stop):
        check_job_args(job_argv)
    elif job_argv:
        raise ConfigError("--status / --logs / --stop take a submission ID and no job")
    cluster = connect(address, args.verbose, args.insecure_http)
    client = cluster.client
    if args.status:
        info = cluster.call(client.get_job_info, args.status)
        print(f"{info.submission_id}: {info.status.value}  entrypoint: {info.entrypoint}")
        if info.message:
            print(info.message.splitlines()[0])
        return outcome(info) if str(info.status.value) in TERMINAL else 0
    if args.logs:
        sys.stdout.write(cluster.call(client.get_job_logs, args.logs))
        return Exit.OK
    if args.stop:
        stopped = cluster.call(client.stop_job, args.stop)
        say(f"job {args.stop}: {'stop requested' if stopped else 'already finished'}")
        return Exit.OK
    renv = runtime_env(args)
    say(f"submitting to {address}: {entrypoint(job_argv)}")
    log.info("code: %s; env: %s", renv.get("working_dir") or ", ".join(renv.get("py_modules", [])),
             ", ".join(sorted(renv["env_vars"])))
    job_id = cluster.call(client.submit_job, entrypoint=entrypoint(job_argv), runtime_env=renv,
                  submission_id=args.submission_id, metadata={"unet_job": job_argv[0]},
                  entrypoint_num_cpus=args.entrypoint_num_cpus, entrypoint_num_gpus=args.entrypoint_num_gpus,
                  entrypoint_memory=args.entrypoint_memory)
    say(f"submitted {job_id}")
    if not args.wait:
        print(job_id)
        say(f"follow it with `unet submit --status {job_id}` or `unet submit --logs {job_id}`; stop it with "
            f"`unet submit --stop {job_id}`")
        return Exit.OK
    try:
        return wait_for(cluster, job_id, args.timeout)
    except KeyboardInterrupt:
        log.error("stopped following job %s; it keeps running on the cluster (`unet submit --stop %s` stops it)",
                  job_id, job_id)
        return Exit.INTERRUPTED


def main(argv: list[str]) -> int:
    return run_main(run, argv)
