"""Quieting TensorFlow and Ray, whose start-up and progress lines would bury a job's own output.

    import_tensorflow(verbose)  import TensorFlow with file descriptor 2 closed while it loads
    quiet_library_loggers(verbose)  Ray's, Ray Data's, TensorFlow's and absl's loggers to ERROR
    quiet_ray_data(verbose)     after ray.init: Ray Data's plan, stats and bars; the raylet notice

One function here touches a private API of Ray (`ray._private.worker.print_to_stdstream`):
`drop_raylet_noise`. tests/test_quieting.py checks it against the pinned Ray version, so a Ray
upgrade that moves it fails a test instead of silently printing again.
"""
from __future__ import annotations

import logging
import os
import re
import sys

LIBRARY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "absl", "tensorflow", "h5py", "openjpeg",
                   "ray.dashboard", "ray._private.runtime_env", "ray.job_submission")
RAYLET_NOTICE = "worker processes have been started"  # Ray's note about more Python workers than cores

# Ray's messages about a node or its workers dying, as the driver receives them (Ray 2.60).
NODE_LOSS_PATTERNS = re.compile(
    r"marked dead|node (?:it was running on )?is dead|node died|has been marked dead|missed too many heartbeats"
    r"|worker died|worker unexpectedly exits|was killed|system error|raylet (?:has )?died|state.dump"
    r"|the actor died|actor .* is dead|ActorDiedError|NodeDiedError|RayletDiedError|WorkerCrashedError"
    r"|Node ID: |node_id="
    # The notice a dead node's agents publish to every driver (ray/_private/process_watcher.py,
    # report_raylet_error_logs): "Raylet is terminated. ... Last 20 lines of the Raylet logs:" and
    # those 20 lines, one message; each of the node's two agents sends it.
    r"|Raylet is terminated|lines of the Raylet logs",
    re.IGNORECASE,
)


def is_node_loss_noise(text: str) -> bool:
    return bool(NODE_LOSS_PATTERNS.search(text))


def quiet_library_loggers(verbose: bool) -> None:
    """Ray sets its loggers' levels when it is imported: call again after importing it."""
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)


def import_tensorflow(verbose: bool) -> None:
    """Import TensorFlow in this process. Quiet: with file descriptor 2 pointed at /dev/null while
    it loads and probes for CUDA, since TensorFlow 2.19+ logs through absl in C++, which
    TF_CPP_MIN_LOG_LEVEL no longer silences (oneDNN notices, "Could not find cuda drivers",
    cuInit errors: docs/design.md, "Facts", 18)."""
    if verbose or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # the CUDA probe logs too
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def drop_raylet_noise(verbose: bool) -> None:
    """Ray prints the raylet's warnings on the driver whatever log_to_driver says; one of them,
    about starting more Python workers than cores, says nothing a user can act on here (Ray Data
    and Ray Train start their own workers), and the death notices of a lost node and its workers
    are one line of jobs/nodes.py's instead. Dropped unless -v; every other message still shows.
    Private API: see the module's docstring."""
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream
    original = getattr(original, "_unet_original", original)

    def filtered(data, ignore_prefix):
        lines = data.get("lines", []) if isinstance(data, dict) else []
        if not verbose and data.get("pid") == "raylet":
            if any(RAYLET_NOTICE in str(x) for x in lines):
                return None
            if any(is_node_loss_noise(str(x)) for x in lines):
                return None  # jobs/nodes.py says it in one line per lost node
        return original(data, ignore_prefix)

    filtered._unet_original = original
    ray_worker.print_to_stdstream = filtered


def quiet_ray_data(verbose: bool) -> None:
    """Ray Data's execution plan, per-dataset stats and progress bars (we draw our own), after
    ray.init (its logger configuration runs there)."""
    import ray

    drop_raylet_noise(verbose)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose and sys.stderr.isatty()
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = verbose
    if hasattr(ctx, "enable_rich_progress_bars"):
        ctx.enable_rich_progress_bars = False
    quiet_library_loggers(verbose)
