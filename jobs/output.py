"""The output policy of a job: quiet by default, everything with -v (secrets never).

    configure(verbose)  this process's logging levels and warning filters, and the environment
                        its Ray workers start with (`worker_env`); call it first thing in a job
    say(text)           a line about where a job stands (stderr; the final summary goes to stdout)

Third-party output (TensorFlow, Ray, Ray Data) is quieted in jobs/quieting.py; live progress is
jobs/progress.py. Verbosity is passed explicitly: no module keeps it in a global.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import warnings

from jobs.quieting import quiet_library_loggers

log = logging.getLogger("unet")

# Warnings of dependencies that say nothing a user can act on (deprecations inside Ray, Keras, TF).
QUIET_CATEGORIES = (DeprecationWarning, FutureWarning, PendingDeprecationWarning)
# Loggers that write request and response headers (credentials, session tokens) at DEBUG: never
# below INFO, even with -v.
CREDENTIAL_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer", "aiobotocore", "requests_oauthlib",
                      "dicomweb_client")  # dicomweb-client logs each request with its headers at DEBUG


def worker_env(verbose: bool) -> dict[str, str]:
    """Environment variables for Ray's worker processes (tasks, actors, Train workers)."""
    if verbose:
        return {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")}
    return {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR",
            "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning"}


def configure(verbose: bool) -> None:
    """Set this process's output policy; call before Ray or TensorFlow are imported where possible."""
    for key, value in worker_env(verbose).items():
        if verbose:
            os.environ.setdefault(key, value)
        else:
            os.environ[key] = value
    level = logging.DEBUG if verbose else logging.WARNING
    if not logging.getLogger().handlers:  # where logging is set up already (tests), it stays
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
        logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(level)
    log.setLevel(logging.DEBUG if verbose else logging.WARNING)
    cap_credential_loggers(verbose)

    quiet_library_loggers(verbose)
    if not verbose:
        for category in QUIET_CATEGORIES:
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("ignore", message=".*[Pp]rogress bars disabled.*")


def cap_credential_loggers(verbose: bool = True) -> None:
    """botocore and urllib3 log request headers at DEBUG (an S3 session token among them): their
    loggers stay at INFO or above whatever -v says; without -v at WARNING, as every logger (their
    own level would let INFO through: dicomweb-client says "search for studies" at INFO)."""
    floor = logging.INFO if verbose else logging.WARNING
    for name in CREDENTIAL_LOGGERS:  # never NOTSET: it would inherit the root's DEBUG under -v
        logging.getLogger(name).setLevel(floor)


def say(text: str) -> None:
    """A line about where a job stands (stderr; the final summary goes to stdout)."""
    print(safe(text), file=sys.stderr, flush=True)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def safe(text: str) -> str:
    """Text for a terminal: control characters (escape sequences in a file name, newlines in an
    error) shown as \\xNN, never interpreted; undecodable bytes of a file name as \\udcNN."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class SafeFormatter(logging.Formatter):
    """Log lines with control characters escaped (messages quote URIs and errors)."""

    def format(self, record: logging.LogRecord) -> str:
        return safe(super().format(record)).replace("\\x0a", "\n")  # a traceback keeps its lines
