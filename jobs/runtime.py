"""Where a job runs: a local Ray instance of its own, or a cluster it attaches to.

    init_ray(address, num_cpus, num_gpus, verbose)
"""
from __future__ import annotations

import logging
import os

from jobs.nodes import NodeWatch
from jobs.output import say, worker_env
from jobs.quieting import quiet_ray_data
from unet_core.io.storage import PRIVATE_OUTPUTS_ENV

# Non-secret settings a job on a cluster needs in order to see the same storage as this shell.
FORWARDED_STORAGE_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


def forwarded_storage_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_STORAGE_ENV if os.environ.get(k)}


def job_settings_env() -> dict[str, str]:
    """This project's settings that every worker of a job must share (--private-outputs)."""
    return {k: os.environ[k] for k in (PRIVATE_OUTPUTS_ENV, "DICOMWEB_CA_BUNDLE", "DICOMWEB_ALLOW_HTTP",
                                       "MLFLOW_TRACKING_URI")
            if os.environ.get(k)}


def cluster_address(address: str | None = None) -> str | None:
    """The cluster a job attaches to: --address, else RAY_ADDRESS; None means a local instance."""
    return address or os.environ.get("RAY_ADDRESS") or None


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None, *,
             verbose: bool) -> None:
    """Attach to a cluster when an address is given (or RAY_ADDRESS is set), and say so; otherwise
    start a single-node Ray of this job's own (`address="local"`), whatever else runs on the
    machine: a `ray start --head` of the user's is never attached to by accident (docs/design.md,
    "Facts", 4: this is what "local mode" means)."""
    import ray

    if ray.is_initialized():
        return
    address = cluster_address(address)
    logging_level = logging.INFO if verbose else logging.ERROR
    if address:
        # A job submitted through the Jobs API already has its runtime env (working dir, the
        # variables `unet submit` forwarded) and Ray refuses a driver that sets them again. A
        # driver started here passes on where storage is, so that the cluster's workers read the
        # same S3 endpoint as this shell (credentials are the cluster's own).
        renv = None if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") else {
            "env_vars": {**worker_env(verbose), **forwarded_storage_env(), **job_settings_env()}}
        ray.init(address=address, log_to_driver=verbose, runtime_env=renv, logging_level=logging_level)
        say(f"attached to the Ray cluster at {address}")
        NodeWatch().start()  # a lost node is one line (jobs/nodes.py)
    else:
        # num_gpus: Ray detects a machine's GPUs itself; a number declares them (`unet bench gpu
        # --gpu-dry-run` declares GPUs on a CPU machine so that GPU accounting and placement run).
        # Workers' output reaches this terminal only with -v (errors come back as exceptions and rows).
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 runtime_env={"env_vars": {**worker_env(verbose), **job_settings_env()}}, log_to_driver=verbose,
                 logging_level=logging_level)
    quiet_ray_data(verbose)
