"""Helpers every job shares: connecting to Ray, common options, loading config files."""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from enum import IntEnum
from typing import Any

from unet_core.config import Limits
from unet_core.errors import ConfigError, InputError, InternalError, StorageError

log = logging.getLogger("unet")


def setup_logging(verbose: bool = False) -> None:
    """Quiet by default in this process and in every Ray worker it starts; -v shows everything
    (jobs/console.py)."""
    from jobs import console

    console.quiet(verbose)


def add_ray_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", default=None,
        help="Ray cluster to attach to: 'auto', 'ray://HEAD:10001' or HEAD:6379. Default: RAY_ADDRESS if set, "
             "else a local Ray instance started in this process",
    )
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs of the local Ray instance (default: this machine's); ignored with --address")


def add_limit_args(parser: argparse.ArgumentParser) -> None:
    d = Limits()
    g = parser.add_argument_group("safety limits for untrusted input")
    g.add_argument("--max-volume-bytes", type=int, default=d.max_volume_bytes, help="decoded voxels of one volume")
    g.add_argument("--max-file-bytes", type=int, default=d.max_file_bytes, help="one stored object")
    g.add_argument("--max-decompressed-bytes", type=int, default=d.max_decompressed_bytes,
                   help="gzip / zip expansion of one member")
    g.add_argument("--max-zip-members", type=int, default=d.max_zip_members)


def limits_from(args: argparse.Namespace) -> Limits:
    return Limits(max_volume_bytes=args.max_volume_bytes, max_file_bytes=args.max_file_bytes,
                  max_decompressed_bytes=args.max_decompressed_bytes, max_zip_members=args.max_zip_members)


# Non-secret settings a job on a cluster needs in order to see the same storage as this shell.
FORWARDED_STORAGE_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


def forwarded_storage_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_STORAGE_ENV if os.environ.get(k)}


def cluster_address(address: str | None = None) -> str | None:
    """The cluster a job attaches to: --address, else RAY_ADDRESS; None means a local instance."""
    return address or os.environ.get("RAY_ADDRESS") or None


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Attach to a cluster when an address is given (or RAY_ADDRESS is set); otherwise start a
    single-node Ray in this process (docs/design.md, fact 4: this is what "local mode" means)."""
    import ray

    from jobs import console

    if ray.is_initialized():
        return
    address = cluster_address(address)
    if address:
        # A job submitted through the Jobs API already has its runtime env (working dir, the
        # variables `unet submit` forwarded) and Ray refuses a driver that sets them again. A
        # driver started here passes on where storage is, so that the cluster's workers read the
        # same S3 endpoint as this shell (credentials are the cluster's own).
        renv = None if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") else {
            "env_vars": {**console.worker_env(), **forwarded_storage_env()}}
        ray.init(address=address, log_to_driver=console.VERBOSE, runtime_env=renv,
                 logging_level=logging.INFO if console.VERBOSE else logging.ERROR)
        console.say(f"attached to the Ray cluster at {address}")
    else:
        env = console.worker_env()
        # num_gpus: Ray detects a machine's GPUs itself; a number declares them (`unet bench gpu
        # --gpu-dry-run` declares GPUs on a CPU machine so that GPU accounting and placement run).
        # Workers' output reaches this terminal only with -v (errors come back as exceptions and rows).
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, runtime_env={"env_vars": env},
                 log_to_driver=console.VERBOSE, logging_level=logging.INFO if console.VERBOSE else logging.ERROR)
    console.quiet_ray_data()


def load_config_file(path: str | None) -> dict[str, Any]:
    """A JSON or YAML file of option values (keys as the long option names, '-' or '_')."""
    if not path:
        return {}
    from unet_core.io import storage

    text = storage.read_bytes(path).decode()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of option names to values")
    return {k.replace("-", "_"): v for k, v in data.items()}


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse argv; values from `--config FILE` become defaults, so the command line still wins.
    An unknown key in the file is an error naming it."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    values = load_config_file(known.config)
    dests = {a.dest for a in parser._actions}
    unknown = sorted(set(values) - dests)
    if unknown:
        parser.error(f"unknown keys in {known.config}: {unknown}")
    parser.set_defaults(**values)
    return parser.parse_args(argv)


class Exit(IntEnum):
    """The exit status of every job (README, docs/reliability.md)."""

    OK = 0  # everything succeeded
    INTERNAL = 1  # a bug: an unexpected exception (with its traceback)
    USAGE = 2  # a usage or configuration error
    SOME_FAILED = 3  # some items failed; every other item is written
    STOPPED = 4  # the job was stopped (`unet submit --stop`)
    STORAGE = 5  # the object store is unavailable or refuses the output
    INTERRUPTED = 130  # Ctrl-C; completed work is kept


def run_main(fn, argv) -> int:
    """Run a job body; domain errors become one clear line and their exit status, not a traceback."""
    try:
        return int(fn(argv) or 0)
    except StorageError as exc:
        log.error("%s", exc)
        return Exit.STORAGE
    except (ConfigError, InputError) as exc:  # an input that cannot be used as a whole is a usage error
        log.error("%s", exc)
        return Exit.USAGE
    except InternalError as exc:
        log.error("%s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        return Exit.INTERNAL
    except KeyboardInterrupt:
        log.error("interrupted; completed work is kept, re-run the same command to resume")
        return Exit.INTERRUPTED


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
